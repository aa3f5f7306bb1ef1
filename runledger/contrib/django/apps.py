"""The Django app: ``INSTALLED_APPS += ["runledger.contrib.django"]`` (app label
``runledger``)."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


class RunledgerConfig(AppConfig):
    """Installs the schema with ``manage.py migrate`` and imports every app's ``jobs``."""

    name = "runledger.contrib.django"
    label = "runledger"
    verbose_name = "Runledger"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Import the ``jobs`` module of every installed app, which registers its handlers
        on ``runledger.contrib.django.registry``; apply ``settings.RUNLEDGER_QUEUE_LIMITS``
        after each ``manage.py migrate``."""
        from runledger.contrib.django.queue_limits import on_post_migrate

        autodiscover_modules("jobs")
        post_migrate.connect(on_post_migrate, sender=self)
