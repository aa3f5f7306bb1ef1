"""A claim whose connection breaks may have committed: the jobs it leased to the runtime, which
never learnt of them, are handed back uncounted at the next claim instead of waiting for their
leases to expire and being charged an attempt they never ran."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

import runledger
from runledger import AttemptOutcome, JobStatus
from tests.runtime.conftest import RuntimeFactory, WaitForJob, wait_until

# A job as a claim of this runtime left it when its reply never arrived: running, leased to
# the runtime for a minute, its handler counted as started.
ORPHAN = """
with claimed as (
    update runledger.jobs
    set status = 'running', attempt = attempt + 1, max_attempts = 1,
        lease_token = %(token)s, lease_owner = %(worker)s,
        lease_expires_at = now() + interval '60 s', started_at = now(),
        handler_started_at = now(), updated_at = now()
    where id = %(id)s
    returning id, attempt, lease_token, started_at
)
insert into runledger.job_attempts (job_id, attempt, worker, lease_token, started_at)
select id, attempt, %(worker)s, lease_token, started_at from claimed
"""


CLAIM_WAITING = """
select pid from pg_stat_activity
where datname = current_database() and wait_event_type = 'Lock' and query like '%%gate as (%%'
"""


def break_a_waiting_claim(dsn: str, observer: psycopg.Connection[Any]) -> None:
    """Hold a runtime's next claim on a lock of ``runledger.jobs``, then terminate its backend
    while it waits: the claim fails with its connection broken (``observer`` is autocommit)."""
    with psycopg.connect(dsn) as locker:
        locker.execute("lock table runledger.jobs in access exclusive mode")
        waiting: list[int] = []

        def claim_waits() -> bool:
            waiting[:] = [row[0] for row in observer.execute(CLAIM_WAITING).fetchall()]
            return bool(waiting)

        wait_until(claim_waits, what="the claim to wait for the table lock")
        observer.execute("select pg_terminate_backend(%s)", (waiting[0],))
        locker.rollback()


def test_jobs_of_a_claim_whose_reply_was_lost_are_released_and_run(
    dsn: str,
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
) -> None:
    registry = runledger.Registry()

    @registry.handler("claim.lost", max_attempts=1)
    def lost(ctx: runledger.JobContext, payload: Any) -> Any:
        return ctx.attempt

    rt = runtime(registry, concurrency=1, poll_interval=0.05, lease_seconds=30)
    job_id = runledger.enqueue(autocommit_conn, "claim.lost", {}, delay=3600)
    autocommit_conn.execute(ORPHAN, {"id": job_id, "token": uuid.uuid4(), "worker": rt.worker_id})

    break_a_waiting_claim(dsn, autocommit_conn)

    job = wait_for_job(job_id, "succeeded", timeout=15)
    assert (job.status, job.attempt, job.output) == (JobStatus.SUCCEEDED, 1, 1)
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.outcome, a.error_type) for a in attempts] == [
        (AttemptOutcome.RELEASED, "ClaimInterrupted"),
        (AttemptOutcome.SUCCEEDED, None),
    ]
