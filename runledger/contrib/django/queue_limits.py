"""``settings.RUNLEDGER_QUEUE_LIMITS``: queue limits stated in Django's settings, applied by
``manage.py migrate`` and ``manage.py runledger_migrate``.

``RUNLEDGER_QUEUE_LIMITS = {"mail": {"concurrency": 5, "rate": 100, "per": 60}}`` makes those
the limits of the named queues each time the schema is migrated (a deploy step), with
``runledger.postgres.queues.apply_queue_limits``: queues whose limits already match are not
written, queues not named and pauses are left to the admin and the CLI.
"""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS

from runledger.contrib.django.connection import psycopg_connection
from runledger.core.limits import parse_queue_limits
from runledger.postgres.queues import QueueSettings, apply_queue_limits

SETTING = "RUNLEDGER_QUEUE_LIMITS"


def apply_settings(using: str = DEFAULT_DB_ALIAS) -> list[QueueSettings]:
    """Apply ``settings.RUNLEDGER_QUEUE_LIMITS`` on database ``using`` in a transaction of
    its own; return the settings of the queues it changed. Nothing when it is not set.

    Raises:
        ConfigError / InvalidQueueLimit / BlankQueue: the setting is invalid; nothing was
            written.
    """
    value = getattr(settings, SETTING, None)
    if value is None:
        return []
    limits = parse_queue_limits(value, name=f"settings.{SETTING}")
    conn = psycopg_connection(using)
    with conn.transaction():
        return apply_queue_limits(conn, limits, by=f"settings.{SETTING}")


def on_post_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """``post_migrate`` receiver of the runledger app: apply the setting once the schema is
    migrated (``manage.py migrate``)."""
    plan = kwargs.get("plan")
    if plan is not None and any(backwards for _migration, backwards in plan):
        return  # migrating the app backwards: the table may be gone
    out = kwargs.get("stdout") or sys.stdout
    for changed in apply_settings(using):
        if kwargs.get("verbosity", 1):
            out.write(f"  runledger queue {changed.queue!r}: {changed.limits_text()} ({SETTING})\n")
