"""Lost leases in the metrics and the job log: a lease the heartbeat finds gone is counted in
``runledger_lost_leases_total`` and logged once, also when the reaper of the same process sees
the same attempt; and what a reaper takes back is labelled with the job's queue."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger.postgres.attempts import ClaimedJob, claim
from runledger.runtime.events import EventStream
from runledger.runtime.heartbeat import Heartbeat
from runledger.runtime.inflight import InFlight
from runledger.runtime.logs import JobLog
from runledger.runtime.metrics import Metrics
from runledger.runtime.reaper import Reaper
from runledger.runtime.worker import WorkerPool
from tests.runtime.conftest import RuntimeFactory, WaitForJob, WaitUntil

FAST = runledger.RetryPolicy(base=0.0, jitter=0.0)


def sample(metrics: Metrics | None, name: str, **labels: str) -> float:
    """A sample of ``metrics``' registry; 0 when the series does not exist (yet)."""
    assert metrics is not None
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def lost_lines(caplog: pytest.LogCaptureFixture, job_id: uuid.UUID) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "runledger.jobs"
        and r.levelno == logging.WARNING
        and "lost its lease" in r.getMessage()
        and getattr(r, "job_id", None) == str(job_id)
    ]


def test_a_lease_taken_from_a_running_handler_is_counted_and_logged_once(
    runtime: RuntimeFactory,
    observer: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registry = runledger.Registry()
    started = threading.Event()
    release = threading.Event()
    cancelled: list[bool] = []

    @registry.handler("lost.stolen", retry=FAST)
    def stolen(ctx: runledger.JobContext, payload: Any) -> None:
        started.set()
        release.wait(10)
        cancelled.append(ctx.cancelled.is_set())

    # A 1.5 s lease: the heartbeat renews every 0.5 s.
    rt = runtime(registry, metrics_port=0, lease_seconds=1.5)
    job_id = runledger.enqueue(observer, "lost.stolen")
    assert started.wait(10), "the handler did not start"

    # Another transaction takes the lease from under the running handler.
    observer.execute(
        "update runledger.jobs set lease_token = gen_random_uuid() where id = %s", (job_id,)
    )

    lost = "runledger_lost_leases_total"
    labels = {"queue": "default", "job_type": "lost.stolen"}
    wait_until(lambda: sample(rt.metrics, lost, **labels) == 1, what="the lost lease counted")
    [line] = lost_lines(caplog, job_id)
    assert "attempt 1/" in line.getMessage() and "the job is running now" in line.getMessage()
    assert (getattr(line, "queue", None), getattr(line, "attempt", None)) == ("default", 1)

    # The handler returns; the stolen lease expires, this runtime's reaper takes it back and
    # the retry succeeds here: the stolen attempt was not this runtime's, so it is an expired
    # lease of its reaper, not a second lost lease.
    release.set()
    wait_for_job(job_id, "succeeded")
    wait_until(
        lambda: sample(rt.metrics, "runledger_leases_expired_total", **labels) == 1,
        what="the reaper's take-back counted",
    )
    assert cancelled[0] is True
    assert sample(rt.metrics, lost, **labels) == 1
    assert len(lost_lines(caplog, job_id)) == 1


@pytest.mark.parametrize("first", ["heartbeat", "reaper"])
def test_an_attempt_both_the_heartbeat_and_the_reaper_of_one_process_see_counts_once(
    first: str,
    store: runledger.Store,
    autocommit_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registry = runledger.Registry()

    @registry.handler("lost.both", retry=FAST)
    def both(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    events = EventStream([registry.hooks.emit, JobLog()])
    pool = WorkerPool(store, registry, worker_id="here", concurrency=1, queues=["default"],
                      lease_seconds=30, poll_interval=1, events=events)  # fmt: skip
    metrics = Metrics(pool.table, store, port=0)
    events.subscribe(metrics)
    heartbeat = Heartbeat(store, pool, registry, lease_seconds=30)

    job_id = runledger.enqueue(autocommit_conn, "lost.both")
    with autocommit_conn.transaction():
        [job] = claim(autocommit_conn, worker="here", queues=["default"],
                      job_types=["lost.both"], limit=1, lease_seconds=30)  # fmt: skip
    flight = pool._adopt(job)
    autocommit_conn.execute(
        "update runledger.jobs set lease_expires_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )

    on_reaped: Callable[[uuid.UUID], InFlight | None] = pool.mark_lost
    if first == "heartbeat":
        # The race: the reaper's write commits, the heartbeat renews and finds the lease
        # gone, and only then does the reaper tell the pool.
        def on_reaped(token: uuid.UUID) -> InFlight | None:
            heartbeat.renew()
            return pool.mark_lost(token)

    reaper = Reaper(store, registry, interval=0, on_reaped=on_reaped, events=events)
    assert reaper.reap_once() == 1
    heartbeat.renew()  # after the reaper: the attempt is known lost, nothing to renew

    assert flight.lost and flight.ctx.cancelled.is_set()
    labels = {"queue": "default", "job_type": "lost.both"}
    assert sample(metrics, "runledger_lost_leases_total", **labels) == 1
    assert sample(metrics, "runledger_leases_expired_total", **labels) == 1
    # The heartbeat's line when it saw it first; else the reaper's outcome line tells it.
    assert len(lost_lines(caplog, job_id)) == (1 if first == "heartbeat" else 0)
    assert sample(metrics, "runledger_jobs_total", outcome="retrying", **labels) == 1


def fake_claim_on(conn: psycopg.Connection[Any], queue: str, *, lease_seconds: float) -> ClaimedJob:
    """Claim one job of ``queue`` as a worker that will never run it nor renew its lease."""
    with conn.transaction():
        [job] = claim(conn, worker="vanished", queues=[queue], job_types=["lost.mail"], limit=1,
                      lease_seconds=lease_seconds)  # fmt: skip
    return job


def test_outcomes_and_expired_leases_of_the_reaper_carry_the_jobs_queue(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registry = runledger.Registry()
    hooked: list[runledger.LifecycleEvent] = []
    registry.on_job_retrying(hooked.append)

    @registry.handler("lost.mail", retry=runledger.RetryPolicy(base=3600, jitter=0))
    def mail(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    job_id = runledger.enqueue(autocommit_conn, "lost.mail", queue="mail")
    fake_claim_on(autocommit_conn, "mail", lease_seconds=0.5)
    rt = runtime(registry, metrics_port=0)  # consumes "default" only; reaps every queue

    labels = {"queue": "mail", "job_type": "lost.mail"}
    wait_until(
        lambda: sample(rt.metrics, "runledger_jobs_total", outcome="retrying", **labels) == 1,
        what="the reaped attempt's outcome counted under its queue",
    )
    assert sample(rt.metrics, "runledger_leases_expired_total", **labels) == 1
    assert sample(rt.metrics, "runledger_lost_leases_total", **labels) == 0  # not this worker's
    most = runledger.get_job(autocommit_conn, job_id).max_attempts
    assert [(e.job_id, e.queue, e.max_attempts) for e in hooked] == [(job_id, "mail", most)]
    [line] = [
        r for r in caplog.records if r.name == "runledger.jobs" and "will retry" in r.getMessage()
    ]
    assert getattr(line, "queue", None) == "mail"
