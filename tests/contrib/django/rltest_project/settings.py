"""Settings of the test project. ``DATABASE_URL`` (a libpq DSN or URL) names the database when
a subprocess runs ``python -m django ... --settings=rltest_project.settings``; the test session
configures Django in-process from these values with databases of its own."""

from __future__ import annotations

import os
from typing import Any

from psycopg.conninfo import conninfo_to_dict


def database(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry for a libpq DSN or URL."""
    params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,
    }


SECRET_KEY = "runledger-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
TIME_ZONE = "Europe/Paris"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "rltest_project.urls"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_tasks",
    "runledger.contrib.django",
    "rltest_app",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_url = os.environ.get("DATABASE_URL", "")
DATABASES = {"default": database(_url)} if _url else {}

TASKS = {
    "default": {
        "BACKEND": "runledger.contrib.django.RunledgerBackend",
        "QUEUES": ["default", "emails"],
    },
    # One attempt only: a raising task fails at once.
    "once": {
        "BACKEND": "runledger.contrib.django.RunledgerBackend",
        "QUEUES": [],
        "OPTIONS": {"max_attempts": 1},
    },
}

# Quick polls and shutdowns for the worker subprocesses.
RUNLEDGER_RUNTIME = {"poll_interval": 0.2, "shutdown_timeout": 5.0, "concurrency": 2}
