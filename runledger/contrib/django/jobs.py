"""The project-wide registry that every installed app's ``jobs.py`` decorates.

``RunledgerConfig.ready()`` imports the ``jobs`` module of each app in ``INSTALLED_APPS``
(like the admin imports ``admin`` modules), so the web process (which enqueues) and
``manage.py runledger_worker`` (which runs) see the same handlers and defaults::

    # shop/jobs.py
    from runledger.contrib.django import registry

    @registry.handler("shop.confirm_order", max_attempts=5)
    def confirm_order(ctx, payload):
        ...

This module is also this app's own ``jobs`` module: it registers ``django.task``, the job
type that runs ``django.tasks`` functions enqueued through ``RunledgerBackend``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections

from runledger.core.payload import JsonValue
from runledger.core.retry import RetryPolicy
from runledger.runtime.context import JobContext
from runledger.runtime.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])

TASK_JOB_TYPE = "django.task"
"""The job type of ``django.tasks`` functions enqueued through ``RunledgerBackend``."""


def _with_django_connections(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Treat a handler call like a request: drop stale Django connections before and after.

    Worker threads live long; without this, a handler that uses the ORM would keep its
    thread's connection past ``CONN_MAX_AGE`` or reuse one the server closed.
    """

    @functools.wraps(fn)
    def run(ctx: JobContext, payload: JsonValue) -> Any:
        close_old_connections()
        try:
            return fn(ctx, payload)
        finally:
            close_old_connections()

    return run


class DjangoRegistry(Registry):
    """A ``runledger.Registry`` whose handlers manage Django connections as requests do.

    Each call of a registered handler is wrapped in ``django.db.close_old_connections()``
    (before and after), so the ORM in a worker thread honours ``CONN_MAX_AGE`` and
    ``CONN_HEALTH_CHECKS``. The decorator returns the function unchanged.

    ORM writes a handler makes commit on Django's connection, on their own: they are not part
    of the job's completion transaction. Write through ``ctx.conn`` for exactly-once effects,
    or make ORM writes idempotent (jobs run at least once).
    """

    def handler(
        self,
        job_type: str,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
        retry: RetryPolicy | None = None,
        concurrency_key: str | Callable[[Any], str] | None = None,
        concurrency_limit: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated ``fn(ctx, payload)`` as the handler of ``job_type``.

        See ``runledger.Registry.handler``; the same defaults and errors apply.
        """
        register = super().handler(
            job_type,
            queue=queue,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            retry=retry,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )

        def decorate(fn: F) -> F:
            register(_with_django_connections(fn))
            return fn

        return decorate


registry = DjangoRegistry()
"""The project's handlers, schedules and hooks; ``runledger_worker`` runs this registry."""


@registry.handler(TASK_JOB_TYPE)
def run_django_task(ctx: JobContext, payload: JsonValue) -> JsonValue:
    """Run a ``django.tasks`` function enqueued by ``RunledgerBackend``; return its result."""
    from .backend import run_task

    return run_task(ctx, payload)
