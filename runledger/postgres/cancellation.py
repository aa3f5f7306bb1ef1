"""Cancelling jobs and workflow runs, and requeueing dead jobs, on the caller's connection.

Each function follows the lock order of ``runledger.postgres.workflow`` and runs inside a
savepoint, so a failure leaves the caller's transaction usable. A running handler learns of
its cancellation through ``ctx.cancelled`` (the runtime's heartbeat finds its lease gone, and
``CANCEL_CHANNEL`` tells it sooner); whatever it writes afterwards is fenced out.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from runledger.core.job import check_text
from runledger.core.payload import JsonValue
from runledger.core.status import JobStatus, StepStatus
from runledger.errors import DatabaseError, JobNotFound, JobNotRequeueable, WorkflowRunNotFound
from runledger.postgres.channels import CANCEL, JOBS
from runledger.postgres.connection import Conn, savepoint, writing
from runledger.postgres.ids import parse_id
from runledger.postgres.late_locks import LateJobLocked, retried_in_savepoint
from runledger.postgres.workflow import StepOutcome, advance, notify_runs, write_events

CANCEL_CHANNEL = CANCEL
"""Cancels NOTIFY this channel with the job id, so runtimes set ``ctx.cancelled`` at once."""

LOCK_JOB = """
select id, status, lease_token, step_id, workflow_run_id, step_key, job_type, idempotency_key
from runledger.jobs
where id = %(id)s
for no key update
"""
# Back from runledger.job_history to the hot table, where the requeue updates it.
REOPEN_JOB = "select runledger.reopen_jobs(array[%(id)s]::uuid[])"

# A requeued job holds its idempotency key again (the key may have passed to a newer job once
# this one finished). Jobs are locked before keys, as the pruner's delete does. The holder's
# status is read by a statement of its own, after the lock: it sees a holder that an enqueue
# committed while this waited.
LOCK_KEY = """
select job_id from runledger.job_keys
where job_type = %(job_type)s and idempotency_key = %(key)s
for update
"""
HOLDER_STATUS = "select status from runledger.jobs where id = %(id)s"
# Replaced rather than updated, so that an enqueue waiting to take the key over from this
# job (it read the job as finished) finds the row gone, reads again and returns this job.
DROP_KEY = """
delete from runledger.job_keys where job_type = %(job_type)s and idempotency_key = %(key)s
"""
HOLD_KEY = """
insert into runledger.job_keys (job_type, idempotency_key, job_id)
values (%(job_type)s, %(key)s, %(id)s)
on conflict do nothing
returning job_id
"""
# Each round either holds the key or lost it to an enqueue that committed a job holding it,
# which the next round finds live.
_HOLD_KEY_ROUNDS = 3

CANCEL_JOBS = f"""
with cancelled as (
    update only runledger.jobs
    set status = 'cancelled', cancel_reason = %(reason)s, lease_token = null,
        lease_owner = null, lease_expires_at = null, finished_at = now(), updated_at = now()
    where id = any(%(ids)s) and status in ('queued', 'running')
    returning id, workflow_run_id, step_key, attempt, queue,
              -- the row as this statement's snapshot saw it: whether it was running
              (select r.status = 'running' from only runledger.jobs as r
               where r.id = jobs.id) as was_running
),
woken as (
    -- A running job frees its slot: wake the claimers of its queue, which may be waiting
    -- for a concurrency key or a queue limit (as a finish does). Not narrowed to those
    -- jobs, so that cancel keeps working on schemas before flow control (version 9).
    select count(pg_notify('{JOBS}', queue)) as n
    from (select distinct queue from cancelled where was_running) as q
),
attempts as (
    update runledger.job_attempts as a
    set outcome = 'cancelled', finished_at = now(), error_message = %(reason)s
    where a.job_id in (select id from cancelled) and a.finished_at is null
),
events as (
    insert into runledger.events (kind, job_id, workflow_run_id, step_key, attempt, data)
    select 'job.cancelled', id, workflow_run_id, step_key, attempt,
           jsonb_strip_nulls(jsonb_build_object('reason', %(reason)s::text))
    from cancelled
)
select id, (select count(pg_notify('{CANCEL}', id::text)) from cancelled),
       (select n from woken)
from cancelled
"""

RUN_STATUS = "select status from runledger.workflow_runs where id = %(id)s"
LOCK_RUN_JOBS = """
select id from only runledger.jobs
where workflow_run_id = %(id)s and status in ('queued', 'running')
order by id
for no key update
"""
LOCK_RUN_STEPS = """
select id, step_key, status, job_id from runledger.workflow_step_runs
where workflow_run_id = %(id)s and status not in ('succeeded', 'failed', 'cancelled')
order by id
for no key update
"""
LOCK_LATE_JOBS = """
select id from only runledger.jobs
where id = any(%(ids)s) and status in ('queued', 'running')
order by id
for no key update nowait
"""
LOCK_RUN = "select status from runledger.workflow_runs where id = %(id)s for no key update"
CANCEL_STEPS = """
update runledger.workflow_step_runs
set status = 'cancelled', error = coalesce(%(reason)s, 'the run was cancelled'),
    finished_at = now(), updated_at = now()
where id = any(%(ids)s)
"""
CANCEL_RUN = """
update runledger.workflow_runs
set status = 'cancelled', cancel_reason = %(reason)s, steps_open = 0, steps_active = 0,
    steps_unsuccessful = steps_unsuccessful + %(cancelled)s, finished_at = now(),
    updated_at = now()
where id = %(id)s
"""
REQUEUE_JOB = f"""
with requeued as (
    update only runledger.jobs
    set status = 'queued', attempt = 0, run_at = now(), finished_at = null,
        cancel_reason = null, updated_at = now()
    where id = %(id)s and status in ('failed', 'cancelled')
    returning id, queue
),
events as (
    insert into runledger.events (kind, job_id, data)
    select 'job.requeued', id, jsonb_build_object('from', %(status)s::text) from requeued
)
select count(pg_notify('{JOBS}', queue)) from requeued
"""


def cancel_job(conn: Conn, job_id: uuid.UUID, reason: str | None = None) -> bool:
    """Cancel a queued or running job; return False if it had already finished.

    A job that is a workflow step cancels its step, and the steps that needed it to succeed.
    Runs in the caller's transaction (see ``runledger.enqueue``).

    Raises:
        InvalidId: ``job_id`` is not a UUID; nothing was sent.
        NulInText / SurrogateInText: ``reason`` cannot be stored as text.
        JobNotFound: there is no such job.
    """
    job_id = parse_id(job_id, field="job_id")
    _check_reason(reason)
    with writing(conn), savepoint(conn, "runledger_cancel_job"):
        row = _lock_job(conn, job_id)
        status, step_id = row[1], row[3]
        if JobStatus(status).is_terminal:
            return False
        conn.execute(CANCEL_JOBS, {"ids": [job_id], "reason": reason}).fetchall()
        if step_id is not None:
            advance(
                conn,
                [StepOutcome(step_id=step_id, status=StepStatus.CANCELLED,
                             error=reason or "the job was cancelled")],
            )  # fmt: skip
        return True


def _lock_job(conn: Conn, job_id: uuid.UUID) -> tuple[Any, ...]:
    """Lock the job's row, wherever it is; raise JobNotFound if there is none."""
    row = conn.execute(LOCK_JOB, {"id": job_id}).fetchone()
    if row is None:
        # A job that finished while this lock waited for it has moved to job_history since
        # this statement's snapshot: a fresh statement finds it there.
        row = conn.execute(LOCK_JOB, {"id": job_id}).fetchone()
    if row is None:
        raise JobNotFound(job_id=job_id)
    return tuple(row)


def _check_reason(reason: str | None) -> None:
    if reason is not None:
        check_text("reason", reason)


def cancel_workflow(conn: Conn, run_id: uuid.UUID, reason: str | None = None) -> bool:
    """Cancel a run: its queued, running, blocked and waiting steps and their jobs.

    Returns False (and writes nothing) if the run had already finished. Runs in the caller's
    transaction; blocks while completions of the run's jobs commit.

    Raises:
        InvalidId: ``run_id`` is not a UUID; nothing was sent.
        NulInText / SurrogateInText: ``reason`` cannot be stored as text.
        WorkflowRunNotFound: there is no such run.
    """
    run_id = parse_id(run_id, field="run_id")
    _check_reason(reason)
    return retried_in_savepoint(
        conn,
        "runledger_cancel_workflow",
        lambda: _cancel_workflow(conn, run_id, reason),
        verb="cancel",
        run_id=run_id,
    )


def _cancel_workflow(conn: Conn, run_id: uuid.UUID, reason: str | None) -> bool:
    found = conn.execute(RUN_STATUS, {"id": run_id}).fetchone()
    if found is None:
        raise WorkflowRunNotFound(run_id=run_id)
    if found[0] not in ("running", "waiting"):
        return False
    # Lock order: jobs, then steps, then the run.
    job_ids = {row[0] for row in conn.execute(LOCK_RUN_JOBS, {"id": run_id}).fetchall()}
    steps = conn.execute(LOCK_RUN_STEPS, {"id": run_id}).fetchall()
    late = sorted(
        row[3]
        for row in steps
        if row[3] is not None and row[2] in ("queued", "running") and row[3] not in job_ids
    )
    if late:
        # Released after the jobs were locked: taking them now is out of order, so only
        # without waiting.
        try:
            rows = conn.execute(LOCK_LATE_JOBS, {"ids": late}).fetchall()
            job_ids.update(row[0] for row in rows)
        except psycopg.errors.LockNotAvailable as err:
            raise LateJobLocked() from err
    status = conn.execute(LOCK_RUN, {"id": run_id}).fetchone()
    if status is None or status[0] not in ("running", "waiting"):
        return False
    if job_ids:
        conn.execute(CANCEL_JOBS, {"ids": sorted(job_ids), "reason": reason}).fetchall()
    step_ids = [row[0] for row in steps]
    if step_ids:
        conn.execute(CANCEL_STEPS, {"ids": step_ids, "reason": reason})
    conn.execute(CANCEL_RUN, {"id": run_id, "reason": reason, "cancelled": len(step_ids)})
    events: list[tuple[str, uuid.UUID | None, uuid.UUID | None, str | None, JsonValue]] = [
        ("step.cancelled", row[3], run_id, row[1], {}) for row in steps
    ]
    events.append(("run.cancelled", None, run_id, None, {"reason": reason}))
    write_events(conn, events)
    notify_runs(conn, [run_id])
    return True


def requeue(conn: Conn, job_id: uuid.UUID) -> bool:
    """Put a failed or cancelled job back in its queue with a fresh attempt budget.

    Attempt numbers start again at 1; earlier attempts stay in ``runledger.job_attempts`` and
    a ``job.requeued`` event records the step. Returns False if the job is queued or running.
    A job with an idempotency key holds it again: if a newer job took the key over once this
    one finished (``Unique.active()``/``within()``), the key comes back to this job when that
    one has finished too, and the requeue is refused while it is queued or running (two live
    jobs would then share one key). Runs in the caller's transaction (see
    ``runledger.enqueue``); blocks while a transaction enqueueing with the key commits.

    Raises:
        InvalidId: ``job_id`` is not a UUID; nothing was sent.
        JobNotFound: there is no such job.
        JobNotRequeueable: the job succeeded, or belongs to a workflow run (whose later steps
            have already been settled), or its key belongs to a live job now (``key_holder``);
            nothing was written.
    """
    job_id = parse_id(job_id, field="job_id")
    with writing(conn), savepoint(conn, "runledger_requeue"):
        row = _lock_job(conn, job_id)
        status = JobStatus(row[1])
        if status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return False
        if status is JobStatus.SUCCEEDED:
            raise JobNotRequeueable(job_id=job_id, status=status, reason="it succeeded")
        if row[3] is not None:
            raise JobNotRequeueable(
                job_id=job_id,
                status=status,
                reason=f"it is step {row[5]!r} of workflow run {row[4]}; enqueue the workflow "
                "again instead",
            )
        if row[7] is not None:
            _hold_key(conn, job_id, status, job_type=row[6], key=row[7])
        conn.execute(REOPEN_JOB, {"id": job_id}).fetchall()
        conn.execute(REQUEUE_JOB, {"id": job_id, "status": str(status)})
        return True


def _hold_key(conn: Conn, job_id: uuid.UUID, status: JobStatus, *, job_type: str, key: str) -> None:
    """Make the job being requeued hold its key, or raise if a live job holds it."""
    params = {"job_type": job_type, "key": key, "id": job_id}
    for _ in range(_HOLD_KEY_ROUNDS):
        locked = conn.execute(LOCK_KEY, params).fetchone()
        if locked is not None and locked[0] != job_id:
            holder = conn.execute(HOLDER_STATUS, {"id": locked[0]}).fetchone()
            if holder is not None and not JobStatus(holder[0]).is_terminal:
                raise JobNotRequeueable(
                    job_id=job_id,
                    status=status,
                    reason=f"its idempotency key {key!r} belongs to job {locked[0]} now, which "
                    f"is {holder[0]}; cancel that job first, or enqueue a new one",
                    key_holder=locked[0],
                )
        if locked is not None:
            conn.execute(DROP_KEY, params)
        if conn.execute(HOLD_KEY, params).fetchone() is not None:
            return
    raise DatabaseError(
        f"the idempotency key {key!r} kept passing to other jobs during this requeue; try again"
    )
