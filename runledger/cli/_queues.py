"""``runledger status``: the depth of every queue, by status, at a glance."""

from __future__ import annotations

import argparse

from runledger.cli._arguments import Subcommands
from runledger.cli._database import reading
from runledger.cli._render import duration, print_json, table
from runledger.postgres.overview import queue_status

_LABELS = {"failed": "failed (last 1h)"}


def _status(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        rows = queue_status(conn)
    if args.json:
        print_json(
            [
                {
                    "queue": queue,
                    "status": status,
                    "jobs": count,
                    "oldest_due_seconds": oldest,
                    "job_types": sorted(types),
                }
                for queue, status, count, oldest, types in rows
            ]
        )
        return 0
    if not rows:
        print("no queued or running jobs, and none failed in the last hour")
        return 0
    print(
        table(
            ["QUEUE", "STATUS", "JOBS", "OLDEST DUE", "JOB TYPES"],
            [
                (
                    queue,
                    _LABELS.get(status, status),
                    str(count),
                    "" if oldest is None else duration(oldest),
                    ",".join(sorted(types)),
                )
                for queue, status, count, oldest, types in rows
            ],
        )
    )
    return 0


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``status``; ``database`` and ``as_json`` are the parents giving --dsn and --json."""
    status = commands.add_parser(
        "status",
        parents=[database, as_json],
        help="queue depth per queue and status",
        description="Queued and running jobs per queue, the age of the oldest due job, and "
        "the jobs that failed in the last hour.",
    )
    status.set_defaults(func=_status)
