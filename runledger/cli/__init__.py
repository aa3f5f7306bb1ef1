"""The ``runledger`` console script: the operator's view of the ledger, and the worker.

Commands::

    runledger migrate [--sql | --check]       install or upgrade the schema
    runledger worker --app pkg.mod:registry   run jobs until SIGTERM/SIGINT
    runledger status                          queue depth per queue and status
    runledger queues list|limit Q|pause Q|resume Q  flow control: limits and pauses
    runledger jobs list|show ID|cancel ID|requeue ID
    runledger runs list|show ID|retry ID      a run's steps drawn as a tree; retry a failed run
    runledger schedules list|pause NAME|resume NAME
    runledger events --job ID | --run ID | --queue Q  the timeline of a job, run or queue
    runledger workers                         the registered workers, live and stale
    runledger health [--max-age S]            exit 0 if this host's worker was seen lately
    runledger prune --older-than 7d           delete finished jobs and runs (--dry-run)

The database comes from ``--dsn`` (before or after the command name), else
``$RUNLEDGER_DSN``, else ``$DATABASE_URL``. Every read command takes ``--json`` (uuids and
times as strings) and reads one consistent snapshot in a read-only transaction. Times print as
described in ``runledger.cli._render``.

Exit codes: 0 ok; 1 not found, refused (e.g. cancelling a finished job) or failed (a bad
DSN, an unreachable server, a schema that is not migrated); 2 usage. Every error is one
``runledger: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence

import psycopg

from runledger.cli import (
    _events,
    _jobs,
    _prune,
    _queue_settings,
    _queues,
    _runs,
    _schedules,
    _service,
    _workers,
)
from runledger.cli._arguments import DSN_HELP, dsn_option, json_option
from runledger.cli._database import CliError
from runledger.errors import RunledgerError

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``runledger`` command."""
    top = argparse.ArgumentParser(
        prog="runledger",
        description="Durable jobs and workflows on PostgreSQL: run workers, and inspect and "
        "operate the ledger.",
        epilog="Exit codes: 0 ok, 1 not found or refused, 2 usage.",
    )
    top.add_argument("--dsn", help=DSN_HELP)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    database, as_json = dsn_option(), json_option()
    _service.add_commands(commands, database)
    _queues.add_commands(commands, database, as_json)
    _queue_settings.add_commands(commands, database, as_json)
    _jobs.add_commands(commands, database, as_json)
    _runs.add_commands(commands, database, as_json)
    _schedules.add_commands(commands, database, as_json)
    _events.add_commands(commands, database, as_json)
    _workers.add_commands(commands, database, as_json)
    _prune.add_commands(commands, database)
    return top


def _fail(message: str) -> int:
    print(f"runledger: {message}", file=sys.stderr)
    return 1


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 refused or failed, 2 usage).

    Usage errors exit through argparse (``SystemExit(2)``) before anything connects.
    """
    args = parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A payload may hold text the terminal's encoding cannot show: escape it, not crash.
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        code = int(args.func(args))
        sys.stdout.flush()
    except (CliError, RunledgerError) as err:
        return _fail(str(err))
    except psycopg.OperationalError as err:
        return _fail(f"the database connection failed: {_one_line(err)}")
    except psycopg.Error as err:
        return _fail(f"the database refused: {_one_line(err)}")
    except ValueError as err:
        return _fail(str(err))
    except BrokenPipeError:
        # The reader went away (``runledger jobs list | head``): stop quietly, and keep the
        # interpreter's final flush from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return code
