"""``runledger runs list|show|retry``: workflow runs, a run's steps drawn as a tree, and
retrying a run that finished with errors or was cancelled."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import attrs
import psycopg

from runledger.cli._arguments import Subcommands, identifier, limit
from runledger.cli._database import reading, writing
from runledger.cli._render import (
    age,
    attempts,
    compact_json,
    duration,
    fancy,
    fields,
    print_json,
    record,
    shorten,
    span,
    table,
    when,
)
from runledger.cli._tree import ASCII, UNICODE, layout
from runledger.core.status import RunStatus, StepKind
from runledger.postgres.overview import list_workflow_runs, server_now, step_progress
from runledger.postgres.reads import get_workflow_run
from runledger.postgres.records import StepRecord, WorkflowRunRecord
from runledger.postgres.rerun import retry_workflow

ERROR_WIDTH = 50


@attrs.frozen(kw_only=True)
class _Progress:
    """What a step's job (or its wait for a signal) has done so far."""

    job_status: str | None
    attempt: int | None
    max_attempts: int | None
    started_at: datetime.datetime | None

    def duration_seconds(self, step: StepRecord, now: datetime.datetime) -> float | None:
        """From the first attempt (or the start of the wait) to the outcome, or to now."""
        if self.started_at is None:
            return None
        return ((step.finished_at or now) - self.started_at).total_seconds()


def _progress(conn: psycopg.Connection[Any], run: WorkflowRunRecord) -> dict[str, _Progress]:
    rows = step_progress(conn, run.id)
    return {row.pop("step_key"): _Progress(**row) for row in rows}


def _list(args: argparse.Namespace) -> int:
    params = {"status": args.status, "name": args.name, "limit": args.limit}
    with reading(args) as conn:
        now = server_now(conn)
        runs = list_workflow_runs(conn, **params)
    if args.json:
        print_json(runs)
        return 0
    if not runs:
        print("no workflow runs match")
        return 0
    rows = []
    for run in runs:
        done = run["steps_total"] - run["steps_open"]
        steps = f"{done}/{run['steps_total']}"
        if run["steps_unsuccessful"]:
            steps += f" ({run['steps_unsuccessful']} failed or cancelled)"
        rows.append(
            (
                str(run["id"]),
                run["name"],
                run["status"],
                steps,
                age(run["created_at"], now),
                span(run["created_at"], run["finished_at"] or now),
            )
        )
    print(table(["ID", "NAME", "STATUS", "STEPS DONE", "CREATED", "DURATION"], rows))
    return 0


def _run_fields(run: WorkflowRunRecord, now: datetime.datetime) -> list[tuple[str, str]]:
    counts: dict[str, int] = {}
    for step in run.steps:
        counts[step.status] = counts.get(step.status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    return [
        ("run", str(run.id)),
        ("name", run.name),
        ("status", run.status),
        ("steps", f"{len(run.steps)} ({tally})" if tally else str(run.steps_total)),
        ("idempotency key", run.idempotency_key or ""),
        ("created", when(run.created_at, now)),
        ("finished", when(run.finished_at, now)),
        ("duration", span(run.created_at, run.finished_at or now)),
        ("cancel reason", run.cancel_reason or ""),
        ("input", compact_json(run.input)),
        ("result", "" if run.result is None else compact_json(run.result)),
    ]


_NOTHING_YET = _Progress(job_status=None, attempt=None, max_attempts=None, started_at=None)


def _run_json(
    run: WorkflowRunRecord, progress: dict[str, _Progress], now: datetime.datetime
) -> dict[str, Any]:
    after: dict[str, list[str]] = {}
    for edge in run.edges:
        after.setdefault(edge.step_key, []).append(edge.prerequisite_key)
    steps = []
    for step in run.steps:
        done = progress.get(step.step_key, _NOTHING_YET)
        job = None
        if step.job_id is not None:
            job = {
                "id": step.job_id,
                "status": done.job_status,
                "attempt": done.attempt,
                "max_attempts": done.max_attempts,
            }
        steps.append(
            {
                **record(step),
                "after": after.get(step.step_key, []),
                "started_at": done.started_at,
                "duration_seconds": done.duration_seconds(step, now),
                "job": job,
            }
        )
    return {**record(run), "steps": steps, "edges": [record(e) for e in run.edges]}


def _step_tree(
    run: WorkflowRunRecord, progress: dict[str, _Progress], now: datetime.datetime
) -> str:
    by_key = {step.step_key: step for step in run.steps}
    nodes = layout(
        [step.step_key for step in run.steps],
        [(edge.step_key, edge.prerequisite_key) for edge in run.edges],
        UNICODE if fancy() else ASCII,
    )
    rows = []
    for node in nodes:
        step = by_key[node.key]
        done = progress.get(node.key, _NOTHING_YET)
        label = node.prefix + node.key
        if node.also_after:
            label += f" (also after {', '.join(node.also_after)})"
        seconds = done.duration_seconds(step, now)
        rows.append(
            (
                label,
                step.status,
                attempts(done.attempt, done.max_attempts),
                "" if seconds is None else duration(seconds),
                "(external)" if step.kind is StepKind.EXTERNAL else step.job_type or "",
                "" if step.job_id is None else str(step.job_id),
                shorten(step.error, ERROR_WIDTH),
            )
        )
    return table(["STEP", "STATUS", "ATTEMPTS", "DURATION", "TYPE", "JOB", "ERROR"], rows)


def _show(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        now = server_now(conn)
        run = get_workflow_run(conn, args.id)
        progress = _progress(conn, run)
    if args.json:
        print_json(_run_json(run, progress, now))
        return 0
    print(fields(_run_fields(run, now)))
    print()
    print(_step_tree(run, progress, now))
    return 0


def _retry(args: argparse.Namespace) -> int:
    with writing(args) as conn:
        reset = retry_workflow(conn, args.id)
        run = get_workflow_run(conn, args.id)
    by_status: dict[str, list[str]] = {}
    for step in run.steps:
        if step.step_key in reset:
            by_status.setdefault(step.status, []).append(step.step_key)
    parts = [f"{status}: {', '.join(keys)}" for status, keys in by_status.items()]
    print(f"retried workflow run {run.id} ({run.status}); {'; '.join(parts)}")
    return 0


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``runs`` and its subcommands; ``database`` and ``as_json`` give --dsn and --json."""
    runs = commands.add_parser(
        "runs", help="list workflow runs, draw their steps, and retry failed ones"
    )
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser(
        "list", parents=[database, as_json], help="the newest workflow runs, filtered"
    )
    listing.add_argument("--status", choices=[str(s) for s in RunStatus])
    listing.add_argument("--name", help="workflow name")
    listing.add_argument("--limit", type=limit, default=50, help="at most this many (50)")
    listing.set_defaults(func=_list)

    show = actions.add_parser(
        "show",
        parents=[database, as_json],
        help="a run's steps as a tree, with status, attempts and durations",
        description="A workflow run and its steps drawn as a tree: roots first, each step "
        "under its prerequisite (a step with several is drawn under the deepest and names the "
        "others). A step's duration runs from its first attempt (or, for an external step, "
        "from when it began waiting) to its outcome, or to now.",
    )
    show.add_argument("id", type=identifier("workflow run"), metavar="ID")
    show.set_defaults(func=_show)

    retry = actions.add_parser(
        "retry",
        parents=[database],
        help="run the failed and cancelled steps of a finished run again",
        description="Open a run that finished completed_with_errors or cancelled again: its "
        "failed and cancelled job steps are queued again (their jobs with a fresh attempt "
        "budget), the steps that waited for them are blocked again, cancelled external steps "
        "wait again, and the steps that succeeded keep their outputs and do not run again. "
        "External steps that failed keep their failure. Refused (exit 1) for a run still "
        "running or waiting, a run that succeeded, and a run that is not found.",
    )
    retry.add_argument("id", type=identifier("workflow run"), metavar="ID")
    retry.set_defaults(func=_retry)
