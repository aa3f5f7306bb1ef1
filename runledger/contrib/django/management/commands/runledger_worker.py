"""``manage.py runledger_worker``: run the project registry's jobs until SIGTERM or SIGINT."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections

from runledger.contrib.django.connection import database_dsn
from runledger.contrib.django.jobs import registry
from runledger.errors import RunledgerError, SchemaNotMigrated
from runledger.postgres.migrate import check_schema
from runledger.runtime.config import settings_from_env
from runledger.runtime.logs import check_log_format, log_format_from_env, stream_handler
from runledger.runtime.runtime import Runtime


class Command(BaseCommand):
    """Run ``runledger.contrib.django.registry`` (every app's ``jobs.py`` and the
    ``django.task`` handler) in this process.

    The runtime connects with ``settings.RUNLEDGER_DATABASE_URL`` or the ``--database``
    entry of ``DATABASES``. Its options come from, by precedence: the command line,
    ``settings.RUNLEDGER_RUNTIME`` (a dict of ``runledger.Runtime`` keyword arguments, such
    as ``{"concurrency": 8, "queues": ["default", "mail"]}``), then the ``RUNLEDGER_*``
    environment variables. SIGTERM or SIGINT stops claiming, waits for running handlers up
    to ``shutdown_timeout`` and exits 0.

    Logging follows Django's ``LOGGING`` unless a format is chosen (``--log-format``, else
    ``settings.RUNLEDGER_LOG_FORMAT``, else the ``RUNLEDGER_LOG_FORMAT`` variable): then the
    ``runledger`` loggers write to stderr in it (``text``, or ``json`` for log shippers), at
    INFO, and do not propagate.
    """

    help = "Run runledger workers for this project's jobs until SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        """``--concurrency``, ``--queues``, ``--database``, ``--no-listen``, ``--log-format``."""
        parser.add_argument("--concurrency", type=int, help="Handlers running at once.")
        parser.add_argument(
            "--queues", help='Comma-separated queues to take jobs from (default: "default").'
        )
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help='The DATABASES entry to connect to (default: "default").',
        )
        parser.add_argument(
            "--no-listen",
            action="store_true",
            help="Poll only, without LISTEN (for PgBouncer in transaction pooling mode).",
        )
        parser.add_argument(
            "--log-format",
            choices=["text", "json"],
            help="Write runledger's logs to stderr as text lines or JSON objects "
            "(default: settings.RUNLEDGER_LOG_FORMAT, else Django's LOGGING).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Check the schema, then run the runtime until a signal stops it."""
        try:
            runtime_options = self._runtime_options(options)
            log_format = self._log_format(options)
        except (RunledgerError, TypeError, ValueError) as err:
            raise CommandError(str(err)) from err
        if log_format is not None:
            runledger_logger = logging.getLogger("runledger")
            runledger_logger.addHandler(stream_handler(log_format))
            runledger_logger.setLevel(logging.INFO)
            runledger_logger.propagate = False
        dsn = database_dsn(options["database"])
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                check_schema(conn)
        except SchemaNotMigrated as err:
            state = "not installed" if err.found is None else f"at version {err.found}"
            raise CommandError(
                f"the runledger schema is {state}; this runledger needs version "
                f"{err.expected}: run `manage.py migrate` (or `manage.py runledger_migrate`)"
            ) from err
        except (RunledgerError, psycopg.Error) as err:
            raise CommandError(f"cannot use the database: {str(err).strip()}") from err
        # This thread does not use the ORM from here on; do not hold a connection for days.
        connections.close_all()
        try:
            runtime = Runtime(dsn, registry, **runtime_options)
        except (TypeError, ValueError) as err:
            raise CommandError(str(err)) from err
        defaults = inspect.signature(Runtime).parameters
        queues = runtime_options.get("queues", defaults["queues"].default)
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        concurrency = runtime_options.get("concurrency", defaults["concurrency"].default)
        self.stdout.write(
            f"runledger worker {runtime.worker_id}: {len(registry.job_types())} job types, "
            f"queues {','.join(queues)}, concurrency {concurrency}. Stop with SIGTERM or Ctrl-C."
        )
        self.stdout.flush()
        runtime.run()
        self.stdout.write(f"runledger worker {runtime.worker_id} stopped.")

    def _log_format(self, options: dict[str, Any]) -> str | None:
        if options.get("log_format"):
            return check_log_format(options["log_format"])
        configured = getattr(settings, "RUNLEDGER_LOG_FORMAT", None)
        if configured:
            return check_log_format(str(configured), name="RUNLEDGER_LOG_FORMAT")
        return log_format_from_env()

    def _runtime_options(self, options: dict[str, Any]) -> dict[str, Any]:
        merged = settings_from_env().runtime_kwargs()
        configured = getattr(settings, "RUNLEDGER_RUNTIME", None) or {}
        if not isinstance(configured, dict):
            raise TypeError("settings.RUNLEDGER_RUNTIME must be a dict of Runtime options")
        merged.update(configured)
        if options["concurrency"] is not None:
            if options["concurrency"] < 1:
                raise ValueError(f"--concurrency must be at least 1, got {options['concurrency']}")
            merged["concurrency"] = options["concurrency"]
        if options["queues"] is not None:
            queues = [q.strip() for q in options["queues"].split(",") if q.strip()]
            if not queues:
                raise ValueError(f"--queues needs at least one name, got {options['queues']!r}")
            merged["queues"] = queues
        if options["no_listen"]:
            merged["listen"] = False
        return merged
