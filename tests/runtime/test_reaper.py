"""The reaper against real Postgres: expired leases and timeouts are retried or dead-lettered,
and a completion that holds the row first is never overwritten."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, JobStatus, RetryPolicy
from runledger.postgres.attempts import ClaimedJob, claim, finish, renew_leases
from runledger.runtime import outcome
from runledger.runtime.reaper import VACUUM_EVERY, Reaper, vacuum_gap

FAST_RETRY = RetryPolicy(base=0.05, jitter=0)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.02)


def fake_claim(conn: psycopg.Connection[Any], job_type: str, *, lease_seconds: float) -> ClaimedJob:
    """Claim one job as a worker that will never run it nor renew its lease (committed)."""
    with conn.transaction():
        claimed = claim(
            conn,
            worker="fake-worker",
            queues=["default"],
            job_types=[job_type],
            limit=1,
            lease_seconds=lease_seconds,
        )
    assert len(claimed) == 1
    return claimed[0]


def outcomes(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> list[tuple[int, Any, str]]:
    return [(a.attempt, a.outcome, a.worker) for a in runledger.list_attempts(conn, job_id)]


def test_expired_lease_is_reaped_by_a_runtime_and_the_retry_succeeds_there(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    registry = runledger.Registry()

    @registry.handler("reap.me", retry=FAST_RETRY)
    def handle(ctx: runledger.JobContext, payload: Any) -> Any:
        return {"attempt": ctx.attempt}

    job_id = runledger.enqueue(autocommit_conn, "reap.me")
    claimed = fake_claim(autocommit_conn, "reap.me", lease_seconds=1)
    assert claimed.id == job_id

    with runledger.Runtime(
        dsn, registry, concurrency=1, poll_interval=0.1, lease_seconds=2, reap_interval=0.2
    ):
        wait_until(
            lambda: runledger.get_job(autocommit_conn, job_id).status == "succeeded",
            what="the reaped job to be retried and succeed",
        )

    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.attempt, job.output) == (2, {"attempt": 2})
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.LEASE_EXPIRED),
        (2, AttemptOutcome.SUCCEEDED),
    ]
    assert attempts[0].worker == "fake-worker"
    assert attempts[0].error_type == "LeaseExpired"
    assert attempts[0].retry_at is not None
    assert attempts[1].worker != "fake-worker"


def test_expired_lease_on_the_last_attempt_dead_letters_the_job(
    store: runledger.Store, autocommit_conn: psycopg.Connection[Any]
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "reap.me", max_attempts=1)
    fake_claim(autocommit_conn, "reap.me", lease_seconds=1)
    reaper = Reaper(store, runledger.Registry(), interval=1)

    assert reaper.reap_once() == 0  # the lease still holds
    wait_until(lambda: reaper.reap_once() == 1, what="the lease to expire and be reaped")

    job = runledger.get_job(autocommit_conn, job_id)
    assert job.status is JobStatus.FAILED
    assert job.finished_at is not None
    assert job.lease_token is None
    assert job.last_error is not None
    assert "lease" in job.last_error.lower()
    assert outcomes(autocommit_conn, job_id) == [(1, AttemptOutcome.LEASE_EXPIRED, "fake-worker")]
    kinds = [e.kind for e in runledger.list_events(autocommit_conn, job_id=job_id)]
    assert kinds[-1] == "job.failed"


def test_attempt_past_its_timeout_is_reaped_as_timed_out_despite_a_long_lease(
    store: runledger.Store, autocommit_conn: psycopg.Connection[Any]
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "slow.one", timeout_seconds=1, max_attempts=3)
    claimed = fake_claim(autocommit_conn, "slow.one", lease_seconds=600)
    # What the owner's heartbeat writes once the handler has started: 1 s left of its timeout.
    # (At claim the deadline gets a lease's grace, since a prefetched job may wait for a
    # thread; the heartbeat makes it exact.)
    with autocommit_conn.transaction():
        renew_leases(autocommit_conn, [(job_id, claimed.lease_token, 1.0)], lease_seconds=600)
    reaper = Reaper(store, runledger.Registry(), interval=1)

    wait_until(lambda: reaper.reap_once() == 1, what="the attempt to time out and be reaped")

    job = runledger.get_job(autocommit_conn, job_id)
    assert job.status is JobStatus.QUEUED  # retried: attempts remain
    assert job.lease_token is None
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, AttemptOutcome.TIMED_OUT)]
    assert attempts[0].lease_token == claimed.lease_token
    assert attempts[0].error_type == "TimedOut"
    assert attempts[0].retry_at is not None


def test_reaper_leaves_a_held_lease_within_its_timeout_alone(
    store: runledger.Store, autocommit_conn: psycopg.Connection[Any]
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "busy", timeout_seconds=600)
    fake_claim(autocommit_conn, "busy", lease_seconds=600)

    assert Reaper(store, runledger.Registry(), interval=1).reap_once() == 0

    job = runledger.get_job(autocommit_conn, job_id)
    assert job.status is JobStatus.RUNNING
    assert outcomes(autocommit_conn, job_id) == [(1, None, "fake-worker")]


def test_reaper_skips_a_completion_that_holds_the_row_and_never_overwrites_it(
    store: runledger.Store,
    conn: psycopg.Connection[Any],
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "race")
    claimed = fake_claim(autocommit_conn, "race", lease_seconds=600)
    autocommit_conn.execute(
        "update runledger.jobs set lease_expires_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )
    # Connection A finishes the attempt with its token: the row is locked and updated, but
    # the transaction is not committed yet.
    report = finish(conn, [outcome.success(claimed, {"done": True})])
    assert [f.job_id for f in report.finished] == [job_id]
    reaper = Reaper(store, runledger.Registry(), interval=1)
    reaped: list[int] = []
    thread = threading.Thread(target=lambda: reaped.append(reaper.reap_once()))

    thread.start()
    thread.join(10)
    finished_first = not thread.is_alive()
    conn.commit()  # releases the reaper, should it be waiting (the test then fails below)
    thread.join(10)

    assert finished_first, "the reaper waited for the row lock instead of skipping it"
    assert reaped == [0]
    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.status, job.output, job.attempt) == (JobStatus.SUCCEEDED, {"done": True}, 1)
    assert outcomes(autocommit_conn, job_id) == [(1, AttemptOutcome.SUCCEEDED, "fake-worker")]
    assert reaper.reap_once() == 0


@pytest.mark.parametrize(
    ("took", "gap"),
    [(0.05, VACUUM_EVERY), (1.0, VACUUM_EVERY), (2.5, 25.0), (30.0, 300.0)],
)
def test_a_long_vacuum_puts_the_next_check_off_by_ten_times_its_duration(
    took: float, gap: float
) -> None:
    assert vacuum_gap(took) == pytest.approx(gap)
