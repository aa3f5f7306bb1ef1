"""The heartbeat against real Postgres: which leases it reports lost.

A renewal can cross the commit of an attempt's own outcome: the job is then already finished
by that attempt, which is no lost lease and must not be reported as one (nor cancel the
handler's context). A lease taken by a cancel is reported, whether or not the outcome is
already on its way.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

import runledger
from runledger.postgres.attempts import ClaimedJob, finish
from runledger.runtime import outcome
from runledger.runtime.heartbeat import Heartbeat
from runledger.runtime.worker import InFlight, WorkerPool
from tests.runtime.test_reaper import fake_claim

JOB_TYPE = "beat"


@pytest.fixture
def registry() -> runledger.Registry:
    registry = runledger.Registry()

    @registry.handler(JOB_TYPE)
    def handle(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    return registry


@pytest.fixture
def pool(store: runledger.Store, registry: runledger.Registry) -> WorkerPool:
    """A pool that is never started: the test hands it its attempts."""
    return WorkerPool(
        store,
        registry,
        worker_id="test-worker",
        concurrency=1,
        queues=["default"],
        lease_seconds=30,
        poll_interval=1,
    )


@pytest.fixture
def heartbeat(store: runledger.Store, pool: WorkerPool, registry: runledger.Registry) -> Heartbeat:
    return Heartbeat(store, pool, registry, lease_seconds=30)


def held_attempt(conn: psycopg.Connection[Any], pool: WorkerPool) -> tuple[ClaimedJob, InFlight]:
    """Enqueue and claim one job, and give the attempt to ``pool``."""
    runledger.enqueue(conn, JOB_TYPE)
    job = fake_claim(conn, JOB_TYPE, lease_seconds=30)
    return job, pool._adopt(job)


def test_renewal_after_the_attempts_own_success_committed_reports_nothing(
    heartbeat: Heartbeat,
    pool: WorkerPool,
    autocommit_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    job, flight = held_attempt(autocommit_conn, pool)
    result = outcome.success(job, {"ok": True})
    pool._queue_outcome(flight, result)
    # The completer's write commits; the heartbeat renews before the completer forgets it.
    with autocommit_conn.transaction():
        finish(autocommit_conn, [result])

    with caplog.at_level(logging.INFO):
        heartbeat.renew()

    assert not flight.lost
    assert not flight.ctx.cancelled.is_set()
    assert "lost its lease" not in caplog.text
    assert runledger.get_job(autocommit_conn, job.id).status is runledger.JobStatus.SUCCEEDED


def test_renewal_of_a_cancelled_running_attempt_reports_it_lost_and_cancels_the_handler(
    heartbeat: Heartbeat,
    registry: runledger.Registry,
    pool: WorkerPool,
    autocommit_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled: list[runledger.LifecycleEvent] = []
    registry.on_job_cancelled(cancelled.append)
    job, flight = held_attempt(autocommit_conn, pool)
    runledger.cancel_job(autocommit_conn, job.id, "operator")

    with caplog.at_level(logging.WARNING):
        heartbeat.renew()

    assert flight.lost
    assert flight.ctx.cancelled.is_set()
    assert f"job {job.id} lost its lease (cancelled)" in caplog.text
    assert [e.job_id for e in cancelled] == [job.id]


def test_renewal_reports_a_cancel_that_beat_an_outcome_still_being_written(
    heartbeat: Heartbeat,
    registry: runledger.Registry,
    pool: WorkerPool,
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    cancelled: list[runledger.LifecycleEvent] = []
    registry.on_job_cancelled(cancelled.append)
    job, flight = held_attempt(autocommit_conn, pool)
    pool._queue_outcome(flight, outcome.success(job, None))
    runledger.cancel_job(autocommit_conn, job.id, "operator")

    heartbeat.renew()

    assert flight.lost
    assert [e.job_id for e in cancelled] == [job.id]


def test_renewal_keeps_a_held_lease_whose_outcome_waits_to_be_written(
    heartbeat: Heartbeat,
    pool: WorkerPool,
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    job, flight = held_attempt(autocommit_conn, pool)
    pool._queue_outcome(flight, outcome.success(job, None))
    before = runledger.get_job(autocommit_conn, job.id).lease_expires_at

    heartbeat.renew()

    after = runledger.get_job(autocommit_conn, job.id).lease_expires_at
    assert before is not None and after is not None and after > before
    assert not flight.lost
