"""Django integration: enqueue inside ``transaction.atomic()``, workers from ``manage.py``,
a ``django.tasks`` backend and read-only admin pages.

Set up::

    INSTALLED_APPS = [..., "runledger.contrib.django"]
    TASKS = {"default": {"BACKEND": "runledger.contrib.django.RunledgerBackend"}}  # optional

``manage.py migrate`` installs the ``runledger`` schema (or ``manage.py runledger_migrate``).
Each app's ``jobs.py`` registers handlers on the project-wide ``registry``; the app imports
those modules when Django starts::

    # shop/jobs.py
    from runledger.contrib.django import registry

    @registry.handler("shop.confirm_order", max_attempts=5)
    def confirm_order(ctx, payload): ...

Enqueue on Django's own connection, so the job commits or rolls back with the atomic block::

    from django.db import transaction
    from runledger.contrib import django as rl

    with transaction.atomic():
        order = Order.objects.create(...)
        rl.enqueue("shop.confirm_order", {"order_id": order.pk})

Run the workers with ``manage.py runledger_worker --concurrency 8 --queues default,mail``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .connection import database_dsn, psycopg_connection
from .enqueue import enqueue, enqueue_many, enqueue_workflow
from .jobs import TASK_JOB_TYPE, DjangoRegistry, registry

if TYPE_CHECKING:
    from .backend import RunledgerBackend

__all__ = [
    "TASK_JOB_TYPE",
    "DjangoRegistry",
    "RunledgerBackend",
    "database_dsn",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "psycopg_connection",
    "registry",
]


def __getattr__(name: str) -> Any:
    # The backend imports the Tasks framework, which a project need not install: load it on
    # first use (TASKS naming "runledger.contrib.django.RunledgerBackend").
    if name == "RunledgerBackend":
        from .backend import RunledgerBackend

        return RunledgerBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
