"""``manage.py runledger_migrate``: install or upgrade the runledger schema."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from runledger.contrib.django.connection import psycopg_connection
from runledger.contrib.django.queue_limits import SETTING, apply_settings
from runledger.errors import RunledgerError
from runledger.postgres.migrate import latest_version, migrate


class Command(BaseCommand):
    """Apply runledger's pending SQL migrations on a Django database (what ``manage.py
    migrate`` does through the app's migration, without Django's migration framework)."""

    help = "Install or upgrade the runledger schema on a Django database."

    def add_arguments(self, parser: CommandParser) -> None:
        """``--database``."""
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help='The database to migrate (default: "default").',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Migrate, then apply ``settings.RUNLEDGER_QUEUE_LIMITS``; print what was applied.
        Each migration commits on its own."""
        conn = psycopg_connection(options["database"])
        try:
            applied = migrate(conn)
            limited = apply_settings(options["database"])
        except RunledgerError as err:
            raise CommandError(str(err)) from err
        if applied:
            versions = ", ".join(map(str, applied))
            self.stdout.write(f"Applied runledger migrations {versions}; schema at {applied[-1]}.")
        else:
            self.stdout.write(f"runledger schema already at version {latest_version()}.")
        for queue in limited:
            self.stdout.write(f"Queue {queue.queue!r}: {queue.limits_text()} ({SETTING}).")
