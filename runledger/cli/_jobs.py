"""``runledger jobs list|show|cancel|requeue``: single jobs and their attempts."""

from __future__ import annotations

import argparse
import contextlib
import datetime
from typing import Any

from runledger.cli._arguments import Subcommands, identifier, limit
from runledger.cli._database import CliError, reading, writing
from runledger.cli._render import (
    age,
    attempts,
    compact_json,
    fields,
    print_json,
    record,
    shorten,
    span,
    table,
    timestamp,
    when,
)
from runledger.core.payload import JsonValue
from runledger.core.progress import describe_progress
from runledger.core.status import JobStatus
from runledger.postgres.cancellation import cancel_job, requeue
from runledger.postgres.overview import recent_jobs, server_now
from runledger.postgres.reads import get_job, list_attempts
from runledger.postgres.records import AttemptRecord, JobRecord

ERROR_WIDTH = 60
LIST_HEADERS = (
    "ID", "QUEUE", "TYPE", "STATUS", "ATTEMPTS", "CREATED", "RUN AT", "FINISHED", "LAST ERROR",
)  # fmt: skip
ATTEMPT_HEADERS = ("ATTEMPT", "WORKER", "STARTED", "DURATION", "OUTCOME", "RETRY", "ERROR")


def _list_row(job: JobRecord, now: datetime.datetime) -> tuple[str, ...]:
    return (
        str(job.id),
        job.queue,
        job.job_type,
        job.status,
        attempts(job.attempt, job.max_attempts),
        age(job.created_at, now),
        age(job.run_at, now) if job.status is JobStatus.QUEUED else "",
        age(job.finished_at, now),
        shorten(job.last_error, ERROR_WIDTH),
    )


def _list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        "status": args.status,
        "queue": args.queue,
        "job_type": args.type,
        "run_id": args.run,
        "limit": args.limit,
    }
    with reading(args) as conn:
        now = server_now(conn)
        jobs = recent_jobs(conn, **params)
    if args.json:
        print_json([record(job) for job in jobs])
        return 0
    if not jobs:
        print("no jobs match")
        return 0
    print(table(LIST_HEADERS, [_list_row(job, now) for job in jobs]))
    return 0


def _attempt_row(attempt: AttemptRecord, now: datetime.datetime) -> tuple[str, ...]:
    retry = ""
    if attempt.retry_at is not None:
        retry = f"{age(attempt.retry_at, now)} ({attempt.retry_reason})"
    error = ""
    if attempt.error_type or attempt.error_message:
        error = ": ".join(filter(None, [attempt.error_type, attempt.error_message]))
    return (
        str(attempt.attempt),
        attempt.worker,
        age(attempt.started_at, now),
        span(attempt.started_at, attempt.finished_at or now),
        attempt.outcome or "(running)",
        retry,
        shorten(error, ERROR_WIDTH),
    )


def _progress(stored: JsonValue, now: datetime.datetime) -> str:
    """``40% page 4 of 10 (attempt 2, 2024-05-01T12:00:03Z (3.2s ago))``, or ""."""
    text = describe_progress(stored)
    if not text or not isinstance(stored, dict):
        return text
    source = []
    if isinstance(stored.get("attempt"), int):
        source.append(f"attempt {stored['attempt']}")
    at = stored.get("at")
    if isinstance(at, str):
        with contextlib.suppress(ValueError):  # written by hand: the value alone
            source.append(when(datetime.datetime.fromisoformat(at), now))
    return f"{text} ({', '.join(source)})" if source else text


def _job_fields(job: JobRecord, now: datetime.datetime) -> list[tuple[str, str]]:
    lease = ""
    if job.lease_owner is not None:
        lease = f"{job.lease_owner} until {when(job.lease_expires_at, now)}"
    workflow = ""
    if job.workflow_run_id is not None:
        workflow = f"run {job.workflow_run_id}, step {job.step_key!r}"
    return [
        ("id", str(job.id)),
        ("type", job.job_type),
        ("queue", job.queue),
        ("status", job.status),
        ("attempts", attempts(job.attempt, job.max_attempts)),
        ("priority", str(job.priority)),
        ("timeout", "" if job.timeout_seconds is None else f"{job.timeout_seconds}s"),
        ("workflow", workflow),
        ("idempotency key", job.idempotency_key or ""),
        (
            "concurrency key",
            ""
            if job.concurrency_key is None
            else f"{job.concurrency_key} (limit {job.concurrency_limit})",
        ),
        ("created", when(job.created_at, now)),
        ("run at", when(job.run_at, now) if job.status is JobStatus.QUEUED else ""),
        ("last started", when(job.started_at, now)),
        ("lease", lease),
        ("progress", _progress(job.progress, now)),
        ("finished", when(job.finished_at, now)),
        ("last error", job.last_error or ""),
        ("cancel reason", job.cancel_reason or ""),
        ("payload", compact_json(job.payload)),
        ("output", "" if job.output is None else compact_json(job.output)),
    ]


def _show(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        now = server_now(conn)
        job = get_job(conn, args.id)
        tries = list_attempts(conn, args.id)
    if args.json:
        print_json({**record(job), "attempts": [record(a) for a in tries]})
        return 0
    print(fields(_job_fields(job, now)))
    if tries:
        print()
        print(table(ATTEMPT_HEADERS, [_attempt_row(attempt, now) for attempt in tries]))
    traced = next((a for a in reversed(tries) if a.error_traceback), None)
    if traced is not None and traced.error_traceback:
        print(f"\ntraceback of attempt {traced.attempt} ({timestamp(traced.started_at)}):")
        print(traced.error_traceback.rstrip())
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with writing(args) as conn:
        cancelled = cancel_job(conn, args.id, args.reason)
        job = get_job(conn, args.id)
    if not cancelled:
        raise CliError(f"job {job.id} already finished ({job.status}); nothing to cancel")
    message = f"cancelled job {job.id}"
    if job.workflow_run_id is not None:
        message += (
            f" (step {job.step_key!r} of workflow run {job.workflow_run_id}; "
            "the steps that needed it are cancelled too)"
        )
    print(message)
    return 0


def _requeue(args: argparse.Namespace) -> int:
    with writing(args) as conn:
        requeued = requeue(conn, args.id)
        job = get_job(conn, args.id)
    if not requeued:
        raise CliError(
            f"job {job.id} is {job.status}; only failed or cancelled jobs can be requeued"
        )
    print(f"requeued job {job.id} on queue {job.queue!r}")
    return 0


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``jobs`` and its subcommands; ``database`` and ``as_json`` give --dsn and --json."""
    jobs = commands.add_parser("jobs", help="list, inspect, cancel and requeue jobs")
    actions = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    job_id = identifier("job")

    listing = actions.add_parser(
        "list", parents=[database, as_json], help="the newest jobs, filtered"
    )
    listing.add_argument("--status", choices=[str(s) for s in JobStatus])
    listing.add_argument("--queue")
    listing.add_argument("--type", help="job type")
    listing.add_argument("--run", type=identifier("workflow run"), help="workflow run id")
    listing.add_argument("--limit", type=limit, default=50, help="at most this many (50)")
    listing.set_defaults(func=_list)

    show = actions.add_parser(
        "show", parents=[database, as_json], help="a job and every attempt of it"
    )
    show.add_argument("id", type=job_id, metavar="ID")
    show.set_defaults(func=_show)

    cancel = actions.add_parser(
        "cancel",
        parents=[database],
        help="cancel a queued or running job",
        description="Cancel a queued or running job. A running handler sees ctx.cancelled and "
        "its late result is fenced out. Exits 1 if the job had already finished.",
    )
    cancel.add_argument("id", type=job_id, metavar="ID")
    cancel.add_argument("--reason", help="recorded on the job and its events")
    cancel.set_defaults(func=_cancel)

    again = actions.add_parser(
        "requeue",
        parents=[database],
        help="run a failed or cancelled job again",
        description="Put a failed or cancelled job back in its queue with a fresh attempt "
        "budget. Exits 1 for a job that is queued, running or succeeded, or is a workflow step.",
    )
    again.add_argument("id", type=job_id, metavar="ID")
    again.set_defaults(func=_requeue)
