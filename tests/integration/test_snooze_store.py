"""The store's side of a snooze: ``finish`` with outcome ``snoozed`` requeues the job with its
attempt count as before the claim, however many times, and the next claim reuses the
attempt number without colliding with anything unique in ``job_attempts``."""

from __future__ import annotations

from typing import Any

import psycopg

import runledger
from runledger import AttemptOutcome, EventKind, JobStatus
from runledger.core.retry import Snooze
from runledger.postgres.attempts import ClaimedJob, claim, finish
from runledger.runtime import outcome

SNOOZES = 200


def claim_one(conn: psycopg.Connection[Any]) -> ClaimedJob:
    with conn.transaction():
        (job,) = claim(
            conn,
            worker="w",
            queues=["default"],
            job_types=["poll.store"],
            limit=1,
            lease_seconds=30,
        )
    return job


def test_a_job_snoozed_many_times_keeps_its_attempt_count_and_each_snooze_has_its_row(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "poll.store", max_attempts=1)
    policy = runledger.RetryPolicy()

    for _ in range(SNOOZES):
        job = claim_one(autocommit_conn)
        assert (job.attempt, job.max_attempts) == (1, 1)
        result = outcome.failure(job, Snooze(after=0), policy)
        with autocommit_conn.transaction():
            report = finish(autocommit_conn, [result])
        assert [f.status for f in report.finished] == [JobStatus.QUEUED]
        assert runledger.get_job(autocommit_conn, job_id).attempt == 0

    # The last attempt of max_attempts=1 is still there to spend.
    job = claim_one(autocommit_conn)
    with autocommit_conn.transaction():
        finish(autocommit_conn, [outcome.success(job, "done")])
    final = runledger.get_job(autocommit_conn, job_id)
    assert (final.status, final.attempt, final.output) == (JobStatus.SUCCEEDED, 1, "done")
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [a.outcome for a in attempts] == [AttemptOutcome.SNOOZED] * SNOOZES + [
        AttemptOutcome.SUCCEEDED
    ]
    assert {a.attempt for a in attempts} == {1}
    assert len({a.lease_token for a in attempts}) == SNOOZES + 1
    snoozed = [
        e for e in runledger.list_events(autocommit_conn, job_id=job_id, limit=1000)
        if e.kind is EventKind.JOB_SNOOZED
    ]  # fmt: skip
    assert len(snoozed) == SNOOZES
    assert {e.attempt for e in snoozed} == {1}


def test_a_snooze_of_a_job_on_its_last_attempt_still_requeues_it(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "poll.store", max_attempts=2)
    policy = runledger.RetryPolicy(base=0, jitter=0)
    first = claim_one(autocommit_conn)
    with autocommit_conn.transaction():
        finish(autocommit_conn, [outcome.failure(first, RuntimeError("once"), policy)])
    last = claim_one(autocommit_conn)
    assert last.attempt == 2

    with autocommit_conn.transaction():
        finish(autocommit_conn, [outcome.failure(last, Snooze(after=60), policy)])

    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.status, job.attempt, job.max_attempts) == (JobStatus.QUEUED, 1, 2)
    late = autocommit_conn.execute(
        "select run_at > now() + interval '59 seconds' from runledger.jobs where id = %s",
        (job_id,),
    ).fetchone()
    assert late == (True,)
