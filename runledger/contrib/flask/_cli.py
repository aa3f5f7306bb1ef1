"""The ``flask runledger`` commands: ``migrate`` and ``worker``."""

from __future__ import annotations

import logging
from typing import Any

import click
import psycopg
from flask import current_app
from flask.cli import AppGroup

import runledger
from runledger.contrib.flask._extension import EXTENSION_KEY, Runledger
from runledger.errors import RunledgerError, SchemaNotMigrated
from runledger.postgres.migrate import latest_version, pending, review_script, schema_version
from runledger.postgres.queues import QueueSettings, apply_queue_limits
from runledger.runtime.logs import configure_logging, log_format_from_env

_logger = logging.getLogger("runledger.flask")

cli = AppGroup("runledger", help="runledger: migrate the schema, run workers.")
"""The ``flask runledger`` command group; ``init_app`` adds it to ``app.cli``."""


def _extension() -> Runledger:
    ext = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(ext, Runledger):
        raise click.UsageError("this app has no runledger extension: call Runledger(app)")
    return ext


@cli.command("migrate")
@click.option(
    "--sql",
    "show_sql",
    is_flag=True,
    help="Print the SQL of the pending migrations, for review; apply nothing.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Exit 1 when migrations are pending, 0 when none; apply nothing.",
)
def migrate_command(show_sql: bool, check: bool) -> None:
    """Install or upgrade the runledger schema in the app's database."""
    if show_sql and check:
        raise click.UsageError("give --sql or --check, not both")
    settings = _extension().settings()
    limited: list[QueueSettings] = []
    try:
        with psycopg.connect(settings.dsn, autocommit=True, connect_timeout=10) as conn:
            if show_sql or check:
                todo = pending(conn)
                current = schema_version(conn)
            else:
                applied = runledger.migrate(conn)
                if settings.queue_limits:
                    with conn.transaction():
                        limited = apply_queue_limits(
                            conn, settings.queue_limits, by="RUNLEDGER_QUEUE_LIMITS"
                        )
    except psycopg.Error as err:
        raise click.ClickException(f"cannot migrate: {str(err).strip()}") from err
    except RunledgerError as err:
        raise click.ClickException(str(err)) from err
    if show_sql:
        click.echo(review_script(todo, current), nl=False)
    elif check:
        if todo:
            at = "not installed" if current is None else f"at version {current}"
            raise click.ClickException(
                f"migrations pending: {', '.join(str(m.version) for m in todo)} "
                f"(schema {at}); run `flask runledger migrate`"
            )
        click.echo(f"schema at version {current}; no migrations pending")
    elif applied:
        click.echo(f"applied migrations {', '.join(map(str, applied))}; schema at {applied[-1]}")
    else:
        click.echo(f"schema already at version {latest_version()}; nothing to apply")
    for queue in limited:
        click.echo(f"queue {queue.queue!r}: {queue.limits_text()} (RUNLEDGER_QUEUE_LIMITS)")


@cli.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Handlers running at once (default: RUNLEDGER_CONCURRENCY, else 8).",
)
@click.option(
    "--queues",
    default=None,
    help="Comma-separated queues to take jobs from (default: RUNLEDGER_QUEUES, else default).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-format",
    default=None,
    type=click.Choice(["text", "json"], case_sensitive=False),
    help="Text lines, or one JSON object per line for log shippers "
    "(default: RUNLEDGER_LOG_FORMAT of the app's config or the environment, else text).",
)
def worker_command(
    concurrency: int | None, queues: str | None, log_level: str, log_format: str | None
) -> None:
    """Run the app's jobs, schedules and reaper until SIGTERM or SIGINT.

    Stops gracefully: claims nothing more, waits for running handlers up to
    RUNLEDGER_SHUTDOWN_TIMEOUT seconds, hands back the rest, and exits 0.
    """
    ext = _extension()
    overrides: dict[str, Any] = {}
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    if queues is not None:
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names:
            raise click.BadParameter("give at least one queue name", param_hint="--queues")
        overrides["queues"] = names
    try:
        chosen = (
            log_format or log_format_from_env(current_app.config) or log_format_from_env() or "text"
        )
    except RunledgerError as err:
        raise click.ClickException(str(err)) from err
    configure_logging(getattr(logging, log_level.upper()), chosen.lower())
    if not ext.registry.job_types():
        _logger.warning("the registry has no handlers: this worker will run no jobs")
    try:
        runtime = ext.create_runtime(**overrides)
    except SchemaNotMigrated as err:
        raise click.ClickException(f"{err}, or `flask runledger migrate`") from err
    except RunledgerError as err:
        raise click.ClickException(str(err)) from err
    # Only this command's own runtime: the in-process one, if configured, serves requests.
    runtime.run()
