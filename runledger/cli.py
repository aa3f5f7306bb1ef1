"""The ``runledger`` console script: ``migrate``, ``worker`` and ``status``.

Exit codes: 0 ok, 1 refused or failed (bad DSN, unreachable server, schema not migrated),
2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import psycopg

from runledger.errors import ConfigError, RunledgerError, SchemaNotMigrated
from runledger.postgres.migrate import check_schema, latest_version, migrate

STATUS_QUERY = """
select queue, status, count(*) as jobs,
       extract(epoch from max(now() - run_at) filter (where status = 'queued'
                                                    and run_at <= now()))::float8
           as oldest_due_seconds,
       array_agg(distinct job_type) as job_types
from runledger.jobs
where status in ('queued', 'running')
   or (status = 'failed' and finished_at > now() - interval '1 hour')
group by queue, status
order by queue, status
"""


class CliError(Exception):
    """A refusal to report on stderr with exit code 1."""


def _dsn(args: argparse.Namespace) -> str:
    dsn = args.dsn or os.environ.get("RUNLEDGER_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise CliError("no database given; pass --dsn or set RUNLEDGER_DSN or DATABASE_URL")
    return str(dsn)


def _connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(_dsn(args), autocommit=True, connect_timeout=10)
    except psycopg.ProgrammingError as err:
        raise CliError(f"invalid DSN: {err}") from err
    except psycopg.OperationalError as err:
        raise CliError(f"cannot connect to the database: {str(err).strip()}") from err


def _migrate(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
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


def _worker(args: argparse.Namespace) -> int:
    from runledger.runtime.config import settings_from_env
    from runledger.runtime.runtime import Runtime

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
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
    registry = _load_registry(args.app)
    with _connect(args) as conn:
        check_schema(conn)
    Runtime(_dsn(args), registry, **options).run()
    return 0


def _status(args: argparse.Namespace) -> int:
    with _connect(args) as conn:
        check_schema(conn)
        rows = conn.execute(STATUS_QUERY).fetchall()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "queue": q,
                        "status": s,
                        "jobs": n,
                        "oldest_due_seconds": age,
                        "job_types": sorted(types),
                    }
                    for q, s, n, age, types in rows
                ]
            )
        )
        return 0
    table = [("QUEUE", "STATUS", "JOBS", "OLDEST DUE", "JOB TYPES")]
    for queue, status, count, age, types in rows:
        oldest = "" if age is None else f"{age:.1f}s"
        table.append((queue, status, str(count), oldest, ",".join(sorted(types))))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``runledger`` command."""
    top = argparse.ArgumentParser(
        prog="runledger", description="Durable jobs and workflows on PostgreSQL."
    )
    commands = top.add_subparsers(dest="command", required=True)
    dsn_help = "PostgreSQL DSN (default: $RUNLEDGER_DSN or $DATABASE_URL)"

    mig = commands.add_parser("migrate", help="install or upgrade the runledger schema")
    mig.add_argument("--dsn", help=dsn_help)
    mig.set_defaults(func=_migrate)

    work = commands.add_parser("worker", help="run jobs until SIGTERM/SIGINT")
    work.add_argument("--dsn", help=dsn_help)
    work.add_argument("--app", required=True, help="the registry, as package.module:name")
    work.add_argument("--concurrency", type=int, help="handlers at once (default 8)")
    work.add_argument("--queues", help="comma-separated queues (default: default)")
    work.add_argument("--no-listen", action="store_true", help="poll only (PgBouncer)")
    work.add_argument("--log-level", default="info")
    work.set_defaults(func=_worker)

    stat = commands.add_parser("status", help="queue depth per queue and status")
    stat.add_argument("--dsn", help=dsn_help)
    stat.add_argument("--json", action="store_true", help="print JSON")
    stat.set_defaults(func=_status)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 refused or failed, 2 usage)."""
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as err:
        print(f"runledger: {err}", file=sys.stderr)
        return 1
    except SchemaNotMigrated as err:
        print(f"runledger: {err}", file=sys.stderr)
        return 1
    except (RunledgerError, ConfigError, ValueError) as err:
        print(f"runledger: {err}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
