"""Lifecycle hooks: the events they receive, called after the commit, and raising hooks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import EventKind, JobStatus, LifecycleEvent, RetryPolicy

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]
WaitForJob = Callable[..., runledger.JobRecord]

FAST_RETRY = RetryPolicy(base=0.05, jitter=0)


def test_job_hooks_receive_lifecycle_events_of_their_kind_and_job(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()
    events: list[LifecycleEvent] = []
    lock = threading.Lock()

    def record(event: LifecycleEvent) -> None:
        with lock:
            events.append(event)

    for register in (
        registry.on_job_started,
        registry.on_job_succeeded,
        registry.on_job_retrying,
        registry.on_job_failed,
    ):
        register(record)

    @registry.handler("flaky", max_attempts=3, retry=FAST_RETRY)
    def flaky(ctx: runledger.JobContext, payload: Any) -> Any:
        if ctx.attempt == 1:
            raise RuntimeError("first time")
        return {"attempt": ctx.attempt}

    @registry.handler("doomed", max_attempts=3)
    def doomed(ctx: runledger.JobContext, payload: Any) -> Any:
        raise runledger.Fail("never")

    runtime(registry)
    flaky_id = runledger.enqueue(autocommit_conn, "flaky")
    doomed_id = runledger.enqueue(autocommit_conn, "doomed")
    wait_for_job(flaky_id, "succeeded")
    wait_for_job(doomed_id, "failed")
    wait_until(lambda: len(events) >= 6, 5, "six hook calls")

    def of(job_id: object) -> list[tuple[EventKind, int | None]]:
        with lock:
            return [(e.kind, e.attempt) for e in events if e.job_id == job_id]

    assert all(isinstance(e, LifecycleEvent) for e in events)
    assert of(flaky_id) == [
        (EventKind.JOB_STARTED, 1),
        (EventKind.JOB_RETRYING, 1),
        (EventKind.JOB_STARTED, 2),
        (EventKind.JOB_SUCCEEDED, 2),
    ]
    assert of(doomed_id) == [(EventKind.JOB_STARTED, 1), (EventKind.JOB_FAILED, 1)]
    by_kind = {(e.kind, e.job_id): e for e in events}
    retrying = by_kind[(EventKind.JOB_RETRYING, flaky_id)]
    assert retrying.job_type == "flaky"
    assert retrying.retry_at is not None
    assert retrying.error == "RuntimeError: first time"
    assert by_kind[(EventKind.JOB_SUCCEEDED, flaky_id)].output == {"attempt": 2}
    assert by_kind[(EventKind.JOB_FAILED, doomed_id)].error == "Fail: never"
    assert len(events) == 6


@pytest.mark.parametrize("uses_conn", [False, True], ids=["completer", "ctx-conn"])
def test_hooks_are_called_only_after_their_transition_commits(
    dsn: str,
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_until: WaitUntil,
    uses_conn: bool,
) -> None:
    registry = runledger.Registry()
    seen: dict[str, JobStatus] = {}
    started_hook_done = threading.Event()

    def status_from_outside(event: LifecycleEvent) -> None:
        assert event.job_id is not None
        with psycopg.connect(dsn, autocommit=True) as fresh:
            seen[str(event.kind)] = runledger.get_job(fresh, event.job_id).status
        if event.kind is EventKind.JOB_STARTED:
            started_hook_done.set()

    registry.on_job_started(status_from_outside)
    registry.on_job_succeeded(status_from_outside)

    @registry.handler("observed")
    def observed(ctx: runledger.JobContext, payload: Any) -> Any:
        # Hold the job in 'running' until the started hook has looked at it.
        started_hook_done.wait(5)
        if uses_conn:
            ctx.conn.execute("select 1")
        return None

    runtime(registry)
    runledger.enqueue(autocommit_conn, "observed")
    wait_until(lambda: len(seen) == 2, 10, "both hooks")

    assert seen == {"job.started": JobStatus.RUNNING, "job.succeeded": JobStatus.SUCCEEDED}


def test_a_raising_hook_is_logged_and_changes_nothing(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="runledger.hooks")
    registry = runledger.Registry()
    calls: list[LifecycleEvent] = []

    @registry.on_job_succeeded
    def bad_hook(event: LifecycleEvent) -> None:
        calls.append(event)
        raise RuntimeError("hook blew up")

    @registry.handler("plain")
    def plain(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload

    runtime(registry)
    first = runledger.enqueue(autocommit_conn, "plain", 1)
    wait_until(lambda: calls, 10, "the hook to be called")

    def logged() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "runledger.hooks"]

    wait_until(logged, 5, "the hook's failure to be logged")
    record = logged()[0]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    # From the record, not caplog.text: the handler appends the record before it formats
    # and writes it (in the hook's thread), so the text can still be empty here.
    assert str(record.exc_info[1]) == "hook blew up"
    assert wait_for_job(first, "succeeded").output == 1
    later = runledger.enqueue(autocommit_conn, "plain", 2)
    assert wait_for_job(later, "succeeded").output == 2
    assert [e.kind for e in runledger.list_events(autocommit_conn, job_id=first)] == [
        EventKind.JOB_ENQUEUED,
        EventKind.JOB_STARTED,
        EventKind.JOB_SUCCEEDED,
    ]


@pytest.mark.parametrize(
    "listen",
    [
        pytest.param(False, id="poll-only"),
        pytest.param(True, id="listen"),
    ],
)
def test_on_job_cancelled_hook_is_called_when_a_running_job_is_cancelled(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    listen: bool,
) -> None:
    registry = runledger.Registry()
    started = threading.Event()
    hooked: list[LifecycleEvent] = []
    called = threading.Event()

    @registry.on_job_cancelled
    def on_cancelled(event: LifecycleEvent) -> None:
        hooked.append(event)
        called.set()

    @registry.handler("long")
    def long(ctx: runledger.JobContext, payload: Any) -> Any:
        started.set()
        ctx.cancelled.wait(10)
        return None

    runtime(registry, listen=listen)
    job_id = runledger.enqueue(autocommit_conn, "long")
    assert started.wait(5)
    runledger.cancel_job(autocommit_conn, job_id, reason="stop")

    assert called.wait(2), "on_job_cancelled was not called"
    assert [(e.kind, e.job_id) for e in hooked] == [(EventKind.JOB_CANCELLED, job_id)]
