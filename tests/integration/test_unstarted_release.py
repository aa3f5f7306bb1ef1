"""The reaper and attempts whose handler never started: released without counting them, a
bounded number of times; attempts marked started are charged."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, JobStatus
from runledger.postgres.attempts import ClaimedJob, claim, mark_started
from runledger.runtime.reaper import UNCOUNTED_RELEASES, Reaper

EXPIRE = "update runledger.jobs set lease_expires_at = now() - interval '1 s' where id = %s"


def claim_one(conn: psycopg.Connection[Any], *, start_now: int | None) -> ClaimedJob:
    """Claim the one queued job as a worker that then dies: its lease is already expired."""
    with conn.transaction():
        (job,) = claim(
            conn,
            worker="dying-worker",
            queues=["default"],
            job_types=["unstarted.job"],
            limit=1,
            lease_seconds=30,
            start_now=start_now,
        )
        conn.execute(EXPIRE, (job.id,))
    return job


@pytest.fixture
def reaper(dsn: str) -> Any:
    with runledger.Store(dsn, max_size=2) as store:
        yield Reaper(store, runledger.Registry(), interval=1.0, vacuum=False)


def test_a_prefetched_attempt_is_released_uncounted_then_charged_after_the_bound(
    autocommit_conn: psycopg.Connection[Any], reaper: Reaper
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "unstarted.job", {}, max_attempts=1)

    for _ in range(UNCOUNTED_RELEASES):
        claimed = claim_one(autocommit_conn, start_now=0)
        assert not claimed.started
        assert reaper.reap_once() == 1
        job = runledger.get_job(autocommit_conn, job_id)
        assert (job.status, job.attempt) == (JobStatus.QUEUED, 0)

    claim_one(autocommit_conn, start_now=0)
    assert reaper.reap_once() == 1

    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [a.outcome for a in attempts] == [
        *[AttemptOutcome.RELEASED] * UNCOUNTED_RELEASES,
        AttemptOutcome.LEASE_EXPIRED,
    ]
    assert {a.error_type for a in attempts} == {"LeaseExpired"}


@pytest.mark.parametrize("how", ["claim", "mark"])
def test_an_attempt_marked_started_is_charged_when_its_lease_expires(
    autocommit_conn: psycopg.Connection[Any], reaper: Reaper, how: str
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "unstarted.job", {}, max_attempts=1)
    claimed = claim_one(autocommit_conn, start_now=1 if how == "claim" else 0)
    assert claimed.started is (how == "claim")
    if how == "mark":
        mark_started(autocommit_conn, [(claimed.id, claimed.lease_token)])
        mark_started(autocommit_conn, [(claimed.id, uuid.uuid4())])  # another lease: no-op

    assert reaper.reap_once() == 1

    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [a.outcome for a in attempts] == [AttemptOutcome.LEASE_EXPIRED]
