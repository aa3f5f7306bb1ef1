"""``runledger events --job ID | --run ID | --queue Q``: the ledger's timeline of a job, a
run, or a queue's settings (``queue.paused``, ``queue.resumed``, ``queue.limited``)."""

from __future__ import annotations

import argparse
import json

from runledger.cli._arguments import Subcommands, identifier
from runledger.cli._database import reading
from runledger.cli._render import duration, print_json, record, table, timestamp
from runledger.core.payload import JsonValue
from runledger.postgres.reads import get_job, get_workflow_run, list_events


def _value(value: JsonValue) -> str:
    # Bare when unambiguous; JSON (quoted, escaped) for text with blanks and for non-strings.
    if isinstance(value, str) and value and not any(ch.isspace() or ch in '"=' for ch in value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _details(data: JsonValue) -> str:
    """An event's data as ``key=value`` pairs, in the order stored."""
    if not isinstance(data, dict):
        return "" if data is None else _value(data)
    return " ".join(f"{key}={_value(value)}" for key, value in data.items())


def _events(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        events = list_events(conn, job_id=args.job, run_id=args.run, queue=args.queue)
        if not events and args.queue is None:
            # No rows may mean no such job or run (events have no foreign keys: the history
            # outlives pruned rows, so a pruned job with events still shows them).
            if args.job is not None:
                get_job(conn, args.job)
            else:
                get_workflow_run(conn, args.run)
    if args.json:
        print_json([record(event) for event in events])
        return 0
    if not events:
        print("no events")
        return 0
    first = events[0].occurred_at
    per_run = args.run is not None
    per_job = args.queue is None  # queue events have no attempt
    headers = ["TIME", "ELAPSED", "EVENT", *(["STEP"] if per_run else []),
               *(["ATTEMPT"] if per_job else []), *(["JOB"] if per_run else []),
               "DETAILS"]  # fmt: skip
    rows = []
    for event in events:
        row = [
            timestamp(event.occurred_at, precise=True),
            "+" + duration((event.occurred_at - first).total_seconds()),
            event.kind,
        ]
        if per_run:
            row.append(event.step_key or "")
        if per_job:
            row.append("" if event.attempt is None else str(event.attempt))
        if per_run:
            row.append("" if event.job_id is None else str(event.job_id))
        row.append(_details(event.data))
        rows.append(row)
    print(table(headers, rows))
    return 0


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``events``; ``database`` and ``as_json`` are the parents giving --dsn and --json."""
    events = commands.add_parser(
        "events",
        parents=[database, as_json],
        help="the timeline of a job, a workflow run or a queue's settings",
        description="Every lifecycle transition the ledger recorded for a job or a workflow "
        "run, or every change of a queue's settings (pauses, resumes, limits), oldest first, "
        "with the time since the first.",
    )
    which = events.add_mutually_exclusive_group(required=True)
    which.add_argument("--job", type=identifier("job"), metavar="ID", help="a job's events")
    which.add_argument(
        "--run", type=identifier("workflow run"), metavar="ID", help="a workflow run's events"
    )
    which.add_argument(
        "--queue", metavar="QUEUE", help="a queue's queue.paused/resumed/limited events"
    )
    events.set_defaults(func=_events)
