"""Claiming: registered types only, priority order, LISTEN wake-ups and the polling fallback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import JobStatus
from runledger.runtime.claimer import Claimer

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]
WaitForJob = Callable[..., runledger.JobRecord]


def test_unregistered_job_type_stays_queued_at_attempt_zero_while_other_jobs_run(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("known")
    def known(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload

    runtime(registry)
    stranger = runledger.enqueue(autocommit_conn, "nobody.handles.this", {"x": 1})
    first = runledger.enqueue(autocommit_conn, "known", 1)
    wait_for_job(first, "succeeded")
    # Another job enqueued after the first finished: at least one more claim round has run.
    second = runledger.enqueue(autocommit_conn, "known", 2)
    wait_for_job(second, "succeeded")

    job = runledger.get_job(autocommit_conn, stranger)
    assert job.status is JobStatus.QUEUED
    assert job.attempt == 0
    assert job.lease_token is None
    assert runledger.list_attempts(autocommit_conn, stranger) == []


def test_priority_orders_claims_highest_first_with_concurrency_one(
    conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()
    order: list[int] = []

    @registry.handler("ranked")
    def ranked(ctx: runledger.JobContext, payload: Any) -> Any:
        order.append(payload["priority"])
        return None

    with conn.transaction():
        ids = [runledger.enqueue(conn, "ranked", {"priority": p}, priority=p) for p in (0, 50, -10)]

    runtime(registry, concurrency=1)
    for job_id in ids:
        wait_for_job(job_id, "succeeded")

    assert order == [50, 0, -10]


class WaitProbe:
    """Stands in for ``pool.wake.wait``: ``idle`` is set while the claimer sleeps in it."""

    def __init__(self, event: threading.Event) -> None:
        self._wait = event.wait
        self.idle = threading.Event()

    def __call__(self, timeout: float | None = None) -> bool:
        self.idle.set()
        try:
            return self._wait(timeout)
        finally:
            self.idle.clear()


def test_listen_wakes_an_idle_claimer_within_two_seconds_despite_a_30_s_poll(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = runledger.Registry()
    started: dict[str, float] = {}
    event = threading.Event()

    @registry.handler("wake.me")
    def wake_me(ctx: runledger.JobContext, payload: Any) -> Any:
        started[payload] = time.monotonic()
        if payload == "measured":
            event.set()
        return None

    rt = runtime(registry, listen=True, poll_interval=30.0, start=False)
    probe = WaitProbe(rt.pool.wake)
    monkeypatch.setattr(rt.pool.wake, "wait", probe)
    rt.start()
    assert rt.listener is not None
    wait_until(rt.listener.connected.is_set, 5, "the listener to connect")
    # A first job makes sure the listener's on-connect wake-up has come and gone.
    wait_for_job(runledger.enqueue(autocommit_conn, "wake.me", "warm-up"), "succeeded")
    wait_until(probe.idle.is_set, 5, "the claimer to sleep in its 30 s poll")

    runledger.enqueue(autocommit_conn, "wake.me", "measured")  # committed on return
    enqueued = time.monotonic()

    assert event.wait(5), "the job did not start within 5 s"
    assert started["measured"] - enqueued < 2.0


def test_poll_only_mode_still_runs_jobs_enqueued_after_start(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
) -> None:
    registry = runledger.Registry()

    @registry.handler("polled")
    def polled(ctx: runledger.JobContext, payload: Any) -> Any:
        return "found by polling"

    rt = runtime(registry, listen=False, poll_interval=0.2)
    assert rt.listener is None
    job_id = runledger.enqueue(autocommit_conn, "polled")

    assert wait_for_job(job_id, "succeeded", timeout=5).output == "found by polling"


def test_a_wake_up_while_every_slot_is_taken_does_not_spin_the_claimer(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completion or NOTIFY that wakes the claimer when it has no free slot must not leave
    it looping: it waits for a slot or the poll interval, a handful of rounds a second."""
    steps = 0
    original = Claimer._step

    def counted(self: Claimer, stop: threading.Event) -> None:
        nonlocal steps
        steps += 1
        original(self, stop)

    monkeypatch.setattr(Claimer, "_step", counted)
    release = threading.Event()
    registry = runledger.Registry()

    @registry.handler("held")
    def held(ctx: runledger.JobContext, payload: Any) -> Any:
        release.wait(10)
        return None

    rt = runtime(registry, concurrency=1, prefetch=0, poll_interval=0.2)
    job_id = runledger.enqueue(autocommit_conn, "held", None)
    wait_for_job(job_id, "running")
    try:
        before = steps
        for _ in range(10):  # wake-ups with no free slot, as a completion or NOTIFY would
            rt.pool.wake.set()
            time.sleep(0.1)
        rounds = steps - before
    finally:
        release.set()
    wait_for_job(job_id, "succeeded")
    # 1 s at a 0.2 s poll: about 5 rounds plus one per wake-up; a spinning loop makes thousands.
    assert rounds <= 30, f"the claimer ran {rounds} rounds in 1 s with no free slot"
