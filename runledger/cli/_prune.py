"""``runledger prune``: delete finished jobs and workflow runs older than an age, now.

The runtime prunes by its retention policy on its own; this command is for a one-off or
cron-driven clean-up (a stricter age, one state) and for seeing what a policy would delete
(``--dry-run``). It deletes in the runtime's batches, each its own transaction, under the same
advisory lock.
"""

from __future__ import annotations

import argparse
import datetime
import time

from runledger.cli._arguments import Subcommands
from runledger.cli._database import CliError, connect
from runledger.cli._render import print_json, table
from runledger.core.retention import format_duration, parse_duration
from runledger.core.status import JobStatus
from runledger.errors import ConfigError
from runledger.postgres.retention import (
    Pruned,
    count_prunable,
    prune_jobs,
    prune_runs,
    sweep_orphan_events,
)

STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
HEADERS = ["STATUS", "JOBS", "RUNS", "RUN JOBS", "ATTEMPTS", "EVENTS"]
# Seconds to wait for another pruner's batch before giving up.
LOCK_WAIT = 30.0


def _age(text: str) -> datetime.timedelta:
    try:
        return parse_duration("--older-than", text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(f"expected {err.expected}, got {text!r}") from None


def _status(text: str) -> JobStatus:
    try:
        status = JobStatus(text)
    except ValueError:
        status = JobStatus.QUEUED
    if status not in STATUSES:
        raise argparse.ArgumentTypeError(f"expected succeeded, failed or cancelled, got {text!r}")
    return status


def _prune_all(args: argparse.Namespace, status: JobStatus) -> Pruned:
    done = Pruned()
    waited_since: float | None = None
    with connect(args) as conn:
        for prune in (prune_jobs, prune_runs):
            while True:
                with conn.transaction():
                    pruned = prune(conn, status, args.older_than)
                if not pruned.locked:
                    waited_since = waited_since or time.monotonic()
                    if time.monotonic() - waited_since > LOCK_WAIT:
                        raise CliError(
                            f"another pruner held the lock for {LOCK_WAIT:g} s; try again"
                        )
                    time.sleep(0.5)  # another pruner's batch: wait for it to end
                    continue
                done += pruned
                if pruned.jobs + pruned.runs == 0:
                    break
    return done


def _sweep(args: argparse.Namespace) -> int:
    deleted, after = 0, 0
    with connect(args) as conn:
        while True:
            with conn.transaction():
                swept = sweep_orphan_events(conn, args.older_than, after=after)
            if not swept.locked:
                return deleted  # a runtime's pruner is at it: it sweeps too
            deleted += swept.deleted
            after = swept.next_after
            if after == 0:
                return deleted


def _prune(args: argparse.Namespace) -> int:
    statuses = args.status or list(STATUSES)
    results: dict[JobStatus, Pruned] = {}
    for status in statuses:
        if args.dry_run:
            with connect(args) as conn:
                results[status] = count_prunable(conn, status, args.older_than)
        else:
            results[status] = _prune_all(args, status)
    orphans = 0 if args.dry_run else _sweep(args)
    age = format_duration(args.older_than)
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "older_than_seconds": args.older_than.total_seconds(),
                "statuses": {
                    str(status): {
                        "jobs": p.jobs,
                        "runs": p.runs,
                        "run_jobs": p.run_jobs,
                        "attempts": p.attempts,
                        "events": p.events,
                    }
                    for status, p in results.items()
                },
                "orphan_events": orphans,
            }
        )
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} what finished more than {age} ago:")
    print(
        table(
            HEADERS,
            [
                (str(s), f"{p.jobs:,}", f"{p.runs:,}", f"{p.run_jobs:,}", f"{p.attempts:,}",
                 f"{p.events:,}")
                for s, p in results.items()
            ],
        )
    )  # fmt: skip
    if not args.dry_run:
        print(f"and {orphans:,} orphan events (their job and run already gone)")
    return 0


def add_commands(commands: Subcommands, database: argparse.ArgumentParser) -> None:
    """Add ``prune``; ``database`` is the parent parser giving ``--dsn``."""
    prune = commands.add_parser(
        "prune",
        parents=[database],
        help="delete finished jobs and workflow runs older than an age",
        description="Delete finished jobs and workflow runs (with their steps, attempts and "
        "events) that finished more than --older-than ago, oldest first, in batches. Queued "
        "and running jobs, and jobs of runs still open, are never touched. A deleted job "
        "frees its idempotency key.",
    )
    prune.add_argument(
        "--older-than",
        type=_age,
        required=True,
        metavar="AGE",
        help="how long ago they finished: 3600, 90m, 36h, 7d, 2w",
    )
    prune.add_argument(
        "--status",
        type=_status,
        action="append",
        help="only this final state (succeeded, failed or cancelled; failed includes runs "
        "completed with errors); repeat for several (default: all three)",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
    )
    prune.add_argument(
        "--json", action="store_true", help="print JSON (uuids and times as strings)"
    )
    prune.set_defaults(func=_prune)
