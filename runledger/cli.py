"""The ``runledger`` console script."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import psycopg

from runledger.errors import RunledgerError
from runledger.postgres.migrate import latest_version, migrate


def _dsn(args: argparse.Namespace) -> str:
    dsn = args.dsn or os.environ.get("RUNLEDGER_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise SystemExit(
            "runledger: no database given; pass --dsn or set RUNLEDGER_DSN or DATABASE_URL"
        )
    return str(dsn)


def _migrate(args: argparse.Namespace) -> int:
    try:
        with psycopg.connect(_dsn(args), autocommit=True, connect_timeout=10) as conn:
            applied = migrate(conn)
    except psycopg.OperationalError as err:
        print(f"runledger: cannot connect to the database: {err}".rstrip(), file=sys.stderr)
        return 1
    except RunledgerError as err:
        print(f"runledger: {err}", file=sys.stderr)
        return 1
    if applied:
        print(f"applied migrations {', '.join(map(str, applied))}; schema at {applied[-1]}")
    else:
        print(f"schema already at version {latest_version()}; nothing to apply")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``runledger`` command."""
    top = argparse.ArgumentParser(
        prog="runledger", description="Durable jobs and workflows on PostgreSQL."
    )
    commands = top.add_subparsers(dest="command", required=True)
    mig = commands.add_parser("migrate", help="install or upgrade the runledger schema")
    mig.add_argument("--dsn", help="PostgreSQL DSN (default: $RUNLEDGER_DSN or $DATABASE_URL)")
    mig.set_defaults(func=_migrate)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 refused or failed, 2 usage)."""
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
