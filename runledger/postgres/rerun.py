"""Retrying a finished workflow run on the caller's connection: ``retry_workflow``.

A run that finished ``completed_with_errors`` or ``cancelled`` opens again: its failed and
cancelled job steps are queued again (their jobs come back from ``runledger.job_history``
with a fresh attempt budget, as ``requeue`` does), the steps those failures cancelled wait
for them again (``blocked``), cancelled external steps wait for their signal again, and the
steps that succeeded keep their outputs. It follows the lock order of
``runledger.postgres.workflow`` (jobs, then steps, then the run) and runs in a savepoint.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg

from runledger.core.payload import JsonValue, dumps
from runledger.core.status import ReleaseMode, RunStatus, StepKind, StepStatus
from runledger.errors import RunNotRetryable, WorkflowRunNotFound
from runledger.postgres.channels import JOBS
from runledger.postgres.connection import Conn
from runledger.postgres.ids import new_id, parse_id
from runledger.postgres.late_locks import LateJobLocked, retried_in_savepoint
from runledger.postgres.workflow import INSERT_STEP_JOBS, write_events

RUN_STATUS = "select status from runledger.workflow_runs where id = %(id)s"

# Read without locking, to know which jobs to lock first (jobs come before steps in the lock
# order). The jobs of steps not yet settled are included, so that a retry issued while a
# completion or a cancel of the run commits waits for it and then finds the run finished.
UNSETTLED_STEP_JOBS = """
select job_id from runledger.workflow_step_runs
where workflow_run_id = %(id)s and job_id is not null and status <> 'succeeded'
"""
# Wherever the job is: the hot table or job_history.
LOCK_JOBS = """
select id, status from runledger.jobs
where id = any(%(ids)s)
order by id
for no key update
"""
# Jobs found only after the steps were locked (moved to job_history while LOCK_JOBS waited,
# or not known at first): taking them now is out of order, so only without waiting.
LOCK_LATE_JOBS = """
select id, status from runledger.jobs
where id = any(%(ids)s)
order by id
for no key update nowait
"""
LOCK_STEPS = """
select id, step_key, kind, status, job_id, job_type, queue, priority, max_attempts,
       timeout_seconds, payload
from runledger.workflow_step_runs
where workflow_run_id = %(id)s
order by id
for no key update
"""
EDGES = """
select step_id, prerequisite_id, release_mode
from runledger.workflow_step_deps
where workflow_run_id = %(id)s
"""
LOCK_RUN = "select status from runledger.workflow_runs where id = %(id)s for no key update"

# Back from runledger.job_history to the hot table, where REQUEUE_STEP_JOBS updates them.
REOPEN_JOBS = "select runledger.reopen_jobs(%(ids)s::uuid[])"
REQUEUE_STEP_JOBS = f"""
with requeued as (
    update only runledger.jobs
    set status = 'queued', attempt = 0, run_at = now(), finished_at = null,
        cancel_reason = null, updated_at = now()
    where id = any(%(ids)s) and status in ('failed', 'cancelled')
    returning id, queue
)
select (select count(*) from requeued),
       (select count(pg_notify('{JOBS}', queue)) from (select distinct queue from requeued) as q)
"""
RESET_STEPS = """
with u as (
    select *
    from unnest(%(ids)s::bigint[], %(statuses)s::text[], %(pending)s::integer[],
                %(job_ids)s::uuid[]) as u(id, status, deps_pending, job_id)
)
update runledger.workflow_step_runs as s
set status = u.status, deps_pending = u.deps_pending, job_id = u.job_id, output = null,
    error = null, posted_at = null, finished_at = null, updated_at = now()
from u
where s.id = u.id
"""
REOPEN_RUN = """
update runledger.workflow_runs
set status = %(status)s, steps_open = %(open)s, steps_active = %(active)s,
    steps_unsuccessful = %(unsuccessful)s, cancel_reason = null, finished_at = null,
    updated_at = now()
where id = %(id)s
"""

RETRYABLE = frozenset({RunStatus.COMPLETED_WITH_ERRORS, RunStatus.CANCELLED})

_TERMINAL = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED})


@attrs.frozen(kw_only=True)
class _Step:
    id: int
    key: str
    kind: StepKind
    status: StepStatus
    job_id: uuid.UUID | None
    job: tuple[Any, ...]  # job_type, queue, priority, max_attempts, timeout_seconds, payload


@attrs.frozen(kw_only=True)
class _Reset:
    step: _Step
    status: StepStatus
    pending: int


def retry_workflow(conn: Conn, run_id: uuid.UUID) -> list[str]:
    """Open a finished run again: run its failed and cancelled steps again, keep the rest.

    For a run that finished ``completed_with_errors`` or ``cancelled``, in step order:

    - a failed or cancelled job step whose prerequisites are all settled is ``queued``
      again: its job comes back (same id) with ``attempt`` 0 and ``run_at`` now, as
      ``requeue`` does (a job that is gone, deleted by hand, is replaced by a new one);
    - a failed or cancelled step with a prerequisite that runs again is ``blocked`` again,
      with ``deps_pending`` counting those prerequisites, and gets a new job once they
      release it (its earlier job stays in the ledger);
    - a cancelled external step whose prerequisites are settled is ``waiting`` again;
    - steps that succeeded keep their status and output, and are not run again; external
      steps that failed keep their failure (a decision from outside), and so do the steps
      that needed them to succeed.

    The run becomes ``running`` (``waiting`` if only external steps can move) with its
    counters recomputed, ``finished_at`` and ``cancel_reason`` cleared and ``result`` kept.
    It writes a ``run.retried`` event (``data``: the status it had and the steps reset),
    ``job.requeued`` and ``step.queued`` for each job step queued again, ``step.waiting`` for
    each external one, and NOTIFYs the queues, all in the caller's transaction (see
    ``runledger.enqueue``). Takes the ledger's lock order (jobs, steps, run); blocks while a
    transaction finishing or cancelling the run commits. Fires no hooks.

    Returns:
        The keys of the steps it reset (queued, waiting or blocked again), in step order.

    Raises:
        InvalidId: ``run_id`` is not a UUID; nothing was sent.
        WorkflowRunNotFound: there is no such run (also once the pruner deleted it).
        RunNotRetryable: the run is still ``running`` or ``waiting``, or ``succeeded``, or
            none of its steps can run again (its only failures are external steps that
            failed); nothing was written.
        DatabaseError: its jobs stayed locked by others for 10 s.
    """
    run_id = parse_id(run_id, field="run_id")
    return retried_in_savepoint(
        conn, "runledger_retry_workflow", lambda: _retry(conn, run_id), verb="retry",
        run_id=run_id,
    )  # fmt: skip


def _retry(conn: Conn, run_id: uuid.UUID) -> list[str]:
    status, steps, jobs = _lock(conn, run_id)
    edges: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for step_id, prerequisite_id, mode in conn.execute(EDGES, {"id": run_id}).fetchall():
        edges[step_id].append((prerequisite_id, mode))
    resets, after = _plan(steps, edges)
    if not resets:
        raise RunNotRetryable(
            run_id=run_id,
            status=status,
            reason="none of its steps can run again: its failures are external steps that "
            "failed, and the steps that needed them",
        )
    queued = [r.step for r in resets if r.status is StepStatus.QUEUED]
    late = sorted(s.job_id for s in queued if s.job_id is not None and s.job_id not in jobs)
    if late:
        try:
            jobs.update(conn.execute(LOCK_LATE_JOBS, {"ids": late}).fetchall())
        except psycopg.errors.LockNotAvailable as err:
            raise LateJobLocked() from err
    fresh: dict[int, uuid.UUID] = {}
    for step in queued:
        job_status = jobs.get(step.job_id) if step.job_id is not None else None
        if job_status is None:  # its job is gone (deleted by hand): a new one
            fresh[step.id] = new_id()
        elif job_status not in ("failed", "cancelled"):
            raise RunNotRetryable(
                run_id=run_id,
                status=status,
                reason=f"step {step.key!r} is {step.status} but its job {step.job_id} is "
                f"{job_status}",
            )
    counters = _counters(steps, after)
    _write(conn, run_id, status=status, to=counters["status"], resets=resets, jobs=jobs,
           fresh=fresh)  # fmt: skip
    conn.execute(REOPEN_RUN, {"id": run_id, **counters})
    return [r.step.key for r in resets]


def _lock(conn: Conn, run_id: uuid.UUID) -> tuple[RunStatus, list[_Step], dict[uuid.UUID, str]]:
    """Lock the run's unsettled jobs, its steps and the run, in that order; check that the
    run can be retried. Returns its status, its steps and the statuses of the jobs locked."""
    found = conn.execute(RUN_STATUS, {"id": run_id}).fetchone()
    if found is None:
        raise WorkflowRunNotFound(run_id=run_id)
    if found[0] == RunStatus.SUCCEEDED:
        raise RunNotRetryable(run_id=run_id, status=found[0], reason="it succeeded")
    candidates = sorted(row[0] for row in conn.execute(UNSETTLED_STEP_JOBS, {"id": run_id}))
    jobs: dict[uuid.UUID, str] = {}
    if candidates:
        jobs.update(conn.execute(LOCK_JOBS, {"ids": candidates}).fetchall())
    steps = [
        _Step(id=r[0], key=r[1], kind=StepKind(r[2]), status=StepStatus(r[3]), job_id=r[4],
              job=tuple(r[5:]))
        for r in conn.execute(LOCK_STEPS, {"id": run_id}).fetchall()
    ]  # fmt: skip
    status_row = conn.execute(LOCK_RUN, {"id": run_id}).fetchone()
    if status_row is None:
        raise WorkflowRunNotFound(run_id=run_id)  # pruned while this waited
    status = RunStatus(status_row[0])
    if status not in RETRYABLE:
        reason = (
            "it succeeded"
            if status is RunStatus.SUCCEEDED
            else f"it is still {status}; wait for it to finish, or cancel it first"
        )
        raise RunNotRetryable(run_id=run_id, status=status, reason=reason)
    return status, steps, jobs


def _write(
    conn: Conn,
    run_id: uuid.UUID,
    *,
    status: RunStatus,
    to: str,
    resets: Sequence[_Reset],
    jobs: dict[uuid.UUID, str],
    fresh: dict[int, uuid.UUID],
) -> None:
    """Write the steps reset, their jobs back in the queue (or new ones) and the events."""
    conn.execute(
        RESET_STEPS,
        {
            "ids": [r.step.id for r in resets],
            "statuses": [str(r.status) for r in resets],
            "pending": [r.pending for r in resets],
            "job_ids": [
                fresh.get(r.step.id, r.step.job_id) if r.status is StepStatus.QUEUED else None
                for r in resets
            ],
        },
    )
    events: list[tuple[str, uuid.UUID | None, uuid.UUID | None, str | None, JsonValue]] = [
        ("run.retried", None, run_id, None,
         {"from": str(status), "to": to, "steps": [r.step.key for r in resets]}),
    ]  # fmt: skip
    requeue: list[uuid.UUID] = []
    for r in resets:
        key = r.step.key
        if r.status is StepStatus.WAITING:
            events.append(("step.waiting", None, run_id, key, {}))
        elif r.status is StepStatus.QUEUED and r.step.id in fresh:
            events.append(("step.queued", fresh[r.step.id], run_id, key, {}))
        elif r.status is StepStatus.QUEUED:
            assert r.step.job_id is not None
            requeue.append(r.step.job_id)
            events.append(("job.requeued", r.step.job_id, run_id, key,
                           {"from": jobs[r.step.job_id]}))  # fmt: skip
            events.append(("step.queued", r.step.job_id, run_id, key, {}))
    if requeue:
        conn.execute(REOPEN_JOBS, {"ids": requeue}).fetchall()
        conn.execute(REQUEUE_STEP_JOBS, {"ids": requeue}).fetchall()
    write_events(conn, events)
    if fresh:
        _insert_jobs(conn, run_id, [r.step for r in resets if r.step.id in fresh], fresh)


def _counters(steps: Sequence[_Step], after: dict[int, StepStatus]) -> dict[str, Any]:
    """The run's status and counters once the retry has reset its steps."""
    kinds = {s.id: s.kind for s in steps}
    open_ = sum(1 for s in after.values() if s not in _TERMINAL)
    active = sum(
        1
        for step_id, s in after.items()
        if kinds[step_id] is StepKind.JOB and s in (StepStatus.QUEUED, StepStatus.RUNNING)
    )
    unsuccessful = sum(1 for s in after.values() if s in (StepStatus.FAILED, StepStatus.CANCELLED))
    return {
        "status": str(RunStatus.RUNNING if active else RunStatus.WAITING),
        "open": open_,
        "active": active,
        "unsuccessful": unsuccessful,
    }


def _plan(
    steps: Sequence[_Step], edges: dict[int, list[tuple[int, str]]]
) -> tuple[list[_Reset], dict[int, StepStatus]]:
    """Which steps run again, and every step's status after the retry.

    Steps come in id (= topological) order, so each prerequisite's new status is known
    before its dependents are looked at.
    """
    after: dict[int, StepStatus] = {}
    resets: list[_Reset] = []
    for step in steps:
        kept = step.status not in (StepStatus.FAILED, StepStatus.CANCELLED) or (
            step.status is StepStatus.FAILED and step.kind is StepKind.EXTERNAL
        )
        if kept:
            after[step.id] = step.status
            continue
        pending = 0
        doomed = False
        for prerequisite_id, mode in edges.get(step.id, []):
            prerequisite = after[prerequisite_id]
            if prerequisite not in _TERMINAL:
                pending += 1
            elif mode == ReleaseMode.ON_SUCCESS and prerequisite is not StepStatus.SUCCEEDED:
                doomed = True
        if doomed:  # a success-prerequisite keeps its failure: so does this step
            after[step.id] = step.status
            continue
        if pending:
            status = StepStatus.BLOCKED
        elif step.kind is StepKind.EXTERNAL:
            status = StepStatus.WAITING
        else:
            status = StepStatus.QUEUED
        after[step.id] = status
        resets.append(_Reset(step=step, status=status, pending=pending))
    return resets, after


def _insert_jobs(
    conn: Conn, run_id: uuid.UUID, steps: Sequence[_Step], ids: dict[int, uuid.UUID]
) -> None:
    conn.execute(
        INSERT_STEP_JOBS,
        {
            "ids": [ids[s.id] for s in steps],
            "queues": [s.job[1] for s in steps],
            "job_types": [s.job[0] for s in steps],
            "payloads": [dumps(s.job[5] if s.job[5] is not None else {}) for s in steps],
            "priorities": [s.job[2] for s in steps],
            "max_attempts": [s.job[3] for s in steps],
            "timeouts": [s.job[4] for s in steps],
            "run_ids": [run_id for _ in steps],
            "step_ids": [s.id for s in steps],
            "step_keys": [s.key for s in steps],
        },
        prepare=False,
    ).fetchall()
