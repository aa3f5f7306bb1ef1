"""Graceful shutdown: waiting for handlers, joining threads, handing stuck jobs to a reaper."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import runledger
from runledger import AttemptOutcome, JobStatus, RetryPolicy
from runledger.runtime.runtime import FLUSH_SECONDS

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]
WaitForJob = Callable[..., runledger.JobRecord]

FAST_RETRY = RetryPolicy(base=0.05, jitter=0)


def test_stop_waits_for_a_handler_finishing_within_shutdown_timeout_and_records_its_success(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()
    started = threading.Event()
    release = threading.Event()

    @registry.handler("finishing")
    def finishing(ctx: runledger.JobContext, payload: Any) -> Any:
        started.set()
        release.wait(10)
        return {"cancelled": ctx.cancelled.is_set()}

    rt = runtime(registry, shutdown_timeout=10.0)
    job_id = runledger.enqueue(autocommit_conn, "finishing")
    assert started.wait(5)
    stopper = threading.Thread(target=rt.stop, name="test-stopper")
    try:
        stopper.start()
        # The claimer stops first: from then on stop() is waiting for the handler.
        wait_until(lambda: not rt.pool.claimer.alive(), 5, "stop() to stop claiming")
        assert stopper.is_alive()
    finally:
        release.set()
    stopper.join(10)

    assert not stopper.is_alive()
    job = runledger.get_job(autocommit_conn, job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.output == {"cancelled": False}
    [attempt] = runledger.list_attempts(autocommit_conn, job_id)
    assert attempt.outcome is AttemptOutcome.SUCCEEDED


def _runledger_threads(exclude: set[threading.Thread]) -> list[str]:
    return sorted(
        t.name
        for t in threading.enumerate()
        if t not in exclude and t.name.startswith("runledger-") and t.is_alive()
    )


def test_stop_leaves_no_runledger_thread_alive_when_handlers_cooperate(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()
    running: list[str] = []
    saw_cancel: list[bool] = []

    @registry.handler("quick")
    def quick(ctx: runledger.JobContext, payload: Any) -> Any:
        return None

    @registry.handler("cooperative")
    def cooperative(ctx: runledger.JobContext, payload: Any) -> Any:
        running.append(payload)
        saw_cancel.append(ctx.cancelled.wait(10))
        return None

    before = set(threading.enumerate())
    rt = runtime(registry, concurrency=3, shutdown_timeout=0.3, listen=True)
    assert _runledger_threads(before), "the runtime started no runledger-* threads"
    wait_for_job(runledger.enqueue(autocommit_conn, "quick"), "succeeded")
    for n in range(2):
        runledger.enqueue(autocommit_conn, "cooperative", str(n))
    wait_until(lambda: len(running) == 2, 5, "both cooperative handlers to run")

    rt.stop()

    assert _runledger_threads(before) == []
    assert saw_cancel == [True, True]


class Stuck:
    """A handler that ignores ``ctx.cancelled`` on its first attempt until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.cancelled_seen: list[bool] = []

    def __call__(self, ctx: runledger.JobContext, payload: Any) -> Any:
        if ctx.attempt > 1:
            return {"attempt": ctx.attempt}
        self.started.set()
        self.release.wait(30)
        self.cancelled_seen.append(ctx.cancelled.is_set())
        return {"attempt": ctx.attempt}


@pytest.fixture
def stuck() -> Iterator[Stuck]:
    handler = Stuck()
    try:
        yield handler
    finally:
        handler.release.set()


def test_stop_expires_the_lease_of_a_handler_ignoring_cancel_past_shutdown_timeout(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, stuck: Stuck
) -> None:
    registry = runledger.Registry()
    registry.handler("stubborn")(stuck)
    # No reaper here: what is checked is the lease as stop() leaves it.
    rt = runtime(registry, concurrency=1, shutdown_timeout=0.3, lease_seconds=1.0, reaper=False)
    job_id = runledger.enqueue(autocommit_conn, "stubborn")
    assert stuck.started.wait(5)

    rt.stop()

    row = autocommit_conn.execute(
        "select status, lease_expires_at <= now() from runledger.jobs where id = %s", (job_id,)
    ).fetchone()
    assert row == ("running", True)


def test_a_job_abandoned_at_stop_is_rerun_by_another_runtimes_reaper(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    stuck: Stuck,
) -> None:
    registry = runledger.Registry()
    registry.handler("stubborn", retry=FAST_RETRY)(stuck)
    first = runtime(registry, concurrency=1, shutdown_timeout=0.3, lease_seconds=1.0, reaper=False)
    job_id = runledger.enqueue(autocommit_conn, "stubborn")
    assert stuck.started.wait(5)

    first.stop()
    assert runledger.get_job(autocommit_conn, job_id).status is JobStatus.RUNNING
    second = runtime(registry, concurrency=1, lease_seconds=1.0, reap_interval=0.2)

    job = wait_for_job(job_id, "succeeded", timeout=15)

    assert job.output == {"attempt": 2}
    one, two = runledger.list_attempts(autocommit_conn, job_id)
    assert one.outcome in (AttemptOutcome.LEASE_EXPIRED, AttemptOutcome.TIMED_OUT)
    assert one.worker == first.worker_id
    assert (two.outcome, two.worker) == (AttemptOutcome.SUCCEEDED, second.worker_id)
    assert stuck.cancelled_seen == []  # the first run is still stuck in its handler
    stuck.release.set()
    wait_until(lambda: stuck.cancelled_seen, 5, "the stuck handler to return")
    assert stuck.cancelled_seen == [True]  # stop() had told it, through ctx.cancelled


def test_stop_returns_within_its_deadline_when_a_handler_ignores_cancel(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, stuck: Stuck
) -> None:
    registry = runledger.Registry()
    registry.handler("stubborn")(stuck)
    rt = runtime(registry, concurrency=1, listen=True, lease_seconds=2.0)
    runledger.enqueue(autocommit_conn, "stubborn")
    assert stuck.started.wait(5)

    started = time.monotonic()
    rt.stop(timeout=1.0)
    took = time.monotonic() - started

    assert took < 1.0 + FLUSH_SECONDS + 0.3, f"stop(timeout=1.0) took {took:.1f} s"


def test_stop_keeps_its_deadline_while_the_database_is_away(
    dsn: str, autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, stuck: Stuck
) -> None:
    """Every stage used to wait on its own (handlers, then 5 s for outcomes that could not
    be written, then 5 s per loop blocked on a connection): stop took seconds past its
    timeout. Now the stages share one deadline."""
    registry = runledger.Registry()
    registry.handler("stubborn")(stuck)
    # One handler runs, one job waits in prefetch: stop must hand it back, and cannot.
    rt = runtime(registry, concurrency=1, prefetch=1, lease_seconds=2.0)
    runledger.enqueue_many(autocommit_conn, [runledger.Job("stubborn")] * 2)
    assert stuck.started.wait(5)
    name = autocommit_conn.info.dbname
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as admin:
        admin.execute(f'alter database "{name}" allow_connections false')
        try:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (name,),
            )
            started = time.monotonic()
            rt.stop(timeout=1.0)
            took = time.monotonic() - started
        finally:
            admin.execute(f'alter database "{name}" allow_connections true')

    assert took < 1.0 + FLUSH_SECONDS + 0.5, f"stop(timeout=1.0) took {took:.1f} s"
