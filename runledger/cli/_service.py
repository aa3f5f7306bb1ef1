"""The commands that install and run runledger: ``migrate`` and ``worker``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Any

import attrs

from runledger.cli._arguments import Subcommands
from runledger.cli._database import CliError, connect, dsn
from runledger.postgres.migrate import (
    check_schema,
    latest_version,
    migrate,
    pending,
    review_script,
    schema_version,
)


def _migrate(args: argparse.Namespace) -> int:
    if args.sql or args.check:
        with connect(args) as conn:
            todo = pending(conn)
            current = schema_version(conn)
        if args.sql:
            sys.stdout.write(review_script(todo, current))
            return 0
        if todo:
            at = "not installed" if current is None else f"at version {current}"
            raise CliError(
                f"migrations pending: {', '.join(str(m.version) for m in todo)} "
                f"(schema {at}); run `runledger migrate`"
            )
        print(f"schema at version {current}; no migrations pending")
        return 0
    with connect(args) as conn:
        applied = migrate(conn)
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))}; schema at {applied[-1]}")
    else:
        print(f"schema already at version {latest_version()}; nothing to apply")
    return 0


def _load_registry(spec: str) -> Any:
    from runledger.runtime.registry import Registry

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"--app must look like package.module:registry, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CliError(f"cannot import {module_name!r}: {err}") from err
    registry = getattr(module, attr, None)
    if not isinstance(registry, Registry):
        raise CliError(f"{spec!r} is not a runledger.Registry (got {type(registry).__name__})")
    return registry


def _retention(args: argparse.Namespace, from_env: Any) -> Any:
    """The policy the options give (over the environment's), or None to leave it be."""
    from runledger.core.retention import Retention, parse_keep

    # only the keep fields: Retention's others (batch_size, busy_share...) are not set here
    keeps: dict[str, Any] = {
        state: parse_keep(f"--keep-{state}", text)
        for state in ("succeeded", "failed", "cancelled")
        if (text := getattr(args, f"keep_{state}")) is not None
    }
    if args.no_retention:
        if keeps:
            raise CliError("--no-retention keeps everything: drop the --keep-* options")
        return Retention(succeeded=None, failed=None, cancelled=None)
    if not keeps:
        return None
    base = from_env if isinstance(from_env, Retention) else Retention()
    return attrs.evolve(base, **keeps)


def _worker(args: argparse.Namespace) -> int:
    from runledger.runtime.config import settings_from_env
    from runledger.runtime.logs import check_log_format, configure_logging, log_format_from_env
    from runledger.runtime.runtime import Runtime

    log_format = (
        check_log_format(args.log_format)
        if args.log_format is not None
        else log_format_from_env() or "text"
    )
    configure_logging(getattr(logging, args.log_level.upper(), logging.INFO), log_format)
    settings = settings_from_env()
    options = settings.runtime_kwargs()
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise CliError(f"--concurrency must be at least 1, got {args.concurrency}")
        options["concurrency"] = args.concurrency
    if args.queues is not None:
        options["queues"] = [q.strip() for q in args.queues.split(",") if q.strip()]
        if not options["queues"]:
            raise CliError(f"--queues needs at least one queue name, got {args.queues!r}")
    if args.no_listen:
        options["listen"] = False
    if args.prefetch is not None:
        if args.prefetch < 0:
            raise CliError(f"--prefetch must be 0 or more, got {args.prefetch}")
        options["prefetch"] = args.prefetch
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise CliError(f"--metrics-port must be from 0 to 65535, got {args.metrics_port}")
        options["metrics_port"] = args.metrics_port
    retention = _retention(args, options.get("retention"))
    if retention is not None:
        options["retention"] = retention
    registry = _load_registry(args.app)
    with connect(args) as conn:
        check_schema(conn)
    Runtime(dsn(args), registry, **options).run()
    return 0


def add_commands(commands: Subcommands, database: argparse.ArgumentParser) -> None:
    """Add ``migrate`` and ``worker``; ``database`` is the parent parser giving ``--dsn``."""
    mig = commands.add_parser(
        "migrate", parents=[database], help="install or upgrade the runledger schema"
    )
    dry = mig.add_mutually_exclusive_group()
    dry.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL of the pending migrations, for review; apply nothing",
    )
    dry.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when migrations are pending, 0 when none; apply nothing",
    )
    mig.set_defaults(func=_migrate)

    work = commands.add_parser("worker", parents=[database], help="run jobs until SIGTERM/SIGINT")
    work.add_argument("--app", required=True, help="the registry, as package.module:name")
    work.add_argument("--concurrency", type=int, help="handlers at once (default 8)")
    work.add_argument("--queues", help="comma-separated queues (default: default)")
    work.add_argument("--no-listen", action="store_true", help="poll only (PgBouncer)")
    work.add_argument(
        "--prefetch",
        type=int,
        help="claimed jobs that may wait for a thread (default: concurrency)",
    )
    work.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on /metrics at this port (needs the metrics extra)",
    )
    for state, default in (("succeeded", "7d"), ("failed", "30d"), ("cancelled", "7d")):
        work.add_argument(
            f"--keep-{state}",
            metavar="AGE",
            help=f"keep {state} jobs and runs this long (7d, 36h, forever; default: "
            f"RUNLEDGER_KEEP_{state.upper()}, else {default})",
        )
    work.add_argument(
        "--no-retention",
        action="store_true",
        help="prune nothing: keep every finished job and run (default: RUNLEDGER_RETENTION)",
    )
    work.add_argument("--log-level", default="info")
    work.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines, or one JSON object per line for log shippers "
        "(default: RUNLEDGER_LOG_FORMAT, else text)",
    )
    work.set_defaults(func=_worker)
