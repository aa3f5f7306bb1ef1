"""``runledger status``: the depth of every queue, by status, at a glance, and the queued
job types that no live worker handles."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from runledger.cli._arguments import Subcommands
from runledger.cli._database import reading
from runledger.cli._render import duration, print_json, table
from runledger.postgres.overview import queue_status
from runledger.postgres.workers import WorkerRecord, list_workers

_LABELS = {"failed": "failed (last 1h)"}


def unhandled(
    rows: Iterable[Sequence[Any]], workers: Iterable[WorkerRecord]
) -> dict[str, list[str]]:
    """The queued job types, by queue, that no live (not stale) worker both consumes the
    queue of and has a handler for."""
    live = [w for w in workers if not w.stale]
    found: dict[str, list[str]] = {}
    for queue, status, _count, _oldest, types in rows:
        if status != "queued":
            continue
        missing = sorted(
            t for t in types if not any(queue in w.queues and t in w.handlers for w in live)
        )
        if missing:
            found[queue] = missing
    return found


def _status(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        rows = queue_status(conn)
        workers = list_workers(conn)
    orphans = unhandled(rows, workers)
    if args.json:
        print_json(
            [
                {
                    "queue": queue,
                    "status": status,
                    "jobs": count,
                    "oldest_due_seconds": oldest,
                    "job_types": sorted(types),
                    "unhandled_job_types": orphans.get(queue, []) if status == "queued" else [],
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
    live = sum(1 for w in workers if not w.stale)
    if orphans and live:
        # With no live worker at all every queued job waits: `runledger workers` says so.
        print()
        print(
            f"queued job types that no live worker handles ({live} live, see `runledger workers`):"
        )
        print(table(["QUEUE", "JOB TYPES"], [(q, ",".join(t)) for q, t in sorted(orphans.items())]))
    return 0


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``status``; ``database`` and ``as_json`` are the parents giving --dsn and --json."""
    status = commands.add_parser(
        "status",
        parents=[database, as_json],
        help="queue depth per queue and status",
        description="Queued and running jobs per queue, the age of the oldest due job, "
        "the jobs that failed in the last hour, and the queued job types that no live worker "
        "handles (none of the runledger.workers rows seen recently consumes their queue with a "
        "handler for them).",
    )
    status.set_defaults(func=_status)
