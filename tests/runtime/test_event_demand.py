"""The runtime builds no event that nobody wants: without hooks and with the job log above
DEBUG no ``job.started`` event is built, and without a subscriber for outcomes the completer
builds none of theirs. A DEBUG log, a hook registered even after the start, or metrics still
get every event they want."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
import pytest

import runledger
from runledger import EventKind, LifecycleEvent
from runledger.postgres.attempts import ClaimedJob
from runledger.runtime import executor
from runledger.runtime.events import started_event
from tests.runtime.conftest import RuntimeFactory, WaitForJob, wait_until

JOBS_LOGGER = "runledger.jobs"


class Wanting:
    """A subscriber of the runtime's stream that wants ``kinds`` and records the kinds of
    every event it is given, wanted or not."""

    def __init__(self, *kinds: EventKind) -> None:
        self.kinds = set(kinds)
        self.seen: list[EventKind] = []
        self.batches = 0
        self._lock = threading.Lock()

    def __call__(self, events: list[LifecycleEvent]) -> None:
        with self._lock:
            self.batches += 1
            self.seen.extend(e.kind for e in events)

    def wants(self, kind: EventKind) -> bool:
        return kind in self.kinds

    def count(self, kind: EventKind) -> int:
        with self._lock:
            return self.seen.count(kind)


@pytest.fixture
def started_built(monkeypatch: pytest.MonkeyPatch) -> list[ClaimedJob]:
    """The jobs whose ``job.started`` event the executor built (a spy on the real builder)."""
    built: list[ClaimedJob] = []

    def spy(job: ClaimedJob) -> LifecycleEvent:
        built.append(job)
        return started_event(job)

    monkeypatch.setattr(executor, "started_event", spy)
    return built


def _noop_registry() -> runledger.Registry:
    registry = runledger.Registry()

    @registry.handler("demand.noop")
    def noop(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    return registry


def _run(conn: psycopg.Connection[Any], wait_for_job: WaitForJob, count: int = 3) -> list[Any]:
    ids = [runledger.enqueue(conn, "demand.noop") for _ in range(count)]
    for job_id in ids:
        wait_for_job(job_id, "succeeded")
    return ids


def test_without_hooks_and_logs_at_info_no_started_event_is_built(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    caplog: pytest.LogCaptureFixture,
    started_built: list[ClaimedJob],
) -> None:
    caplog.set_level(logging.INFO, logger=JOBS_LOGGER)
    rt = runtime(_noop_registry(), start=False)
    outcomes = Wanting(EventKind.JOB_SUCCEEDED)
    rt.events.subscribe(outcomes)
    rt.start()

    ids = _run(autocommit_conn, wait_for_job)
    wait_until(lambda: outcomes.count(EventKind.JOB_SUCCEEDED) == len(ids), what="successes")

    assert started_built == []
    assert outcomes.count(EventKind.JOB_STARTED) == 0
    assert len([r for r in caplog.records if r.name == JOBS_LOGGER]) == len(ids)


def test_a_debug_log_still_gets_a_start_line_per_job(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    caplog: pytest.LogCaptureFixture,
    started_built: list[ClaimedJob],
) -> None:
    caplog.set_level(logging.DEBUG, logger=JOBS_LOGGER)
    runtime(_noop_registry())

    ids = _run(autocommit_conn, wait_for_job)

    def start_lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == JOBS_LOGGER and r.levelno == logging.DEBUG
        ]

    wait_until(lambda: len(start_lines()) == len(ids), what="a start line per job")
    assert sorted(start_lines()) == sorted(
        f"demand.noop[{job_id}] started (attempt 1/5)" for job_id in ids
    )
    assert sorted(job.id for job in started_built) == sorted(ids)


def test_a_hook_or_a_log_level_set_after_the_start_gets_the_events_from_then_on(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    caplog: pytest.LogCaptureFixture,
    started_built: list[ClaimedJob],
) -> None:
    caplog.set_level(logging.WARNING, logger=JOBS_LOGGER)
    registry = _noop_registry()
    runtime(registry)
    _run(autocommit_conn, wait_for_job, count=2)
    assert started_built == []

    started: list[LifecycleEvent] = []
    registry.on_job_started(started.append)
    hooked = _run(autocommit_conn, wait_for_job, count=2)
    wait_until(lambda: len(started) == 2, what="the hook of each job started after it")
    assert sorted(e.job_id for e in started) == sorted(hooked)  # type: ignore[type-var]
    assert all(e.queue == "default" and e.queue_wait is not None for e in started)

    caplog.set_level(logging.INFO, logger=JOBS_LOGGER)
    logged = _run(autocommit_conn, wait_for_job, count=2)

    def success_lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == JOBS_LOGGER and r.levelno == logging.INFO
        ]

    wait_until(lambda: len(success_lines()) == 2, what="a success line per job logged at INFO")
    assert all(any(str(job_id) in line for line in success_lines()) for job_id in logged)


def test_the_completer_hands_no_batch_on_when_nobody_wants_an_outcome(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=JOBS_LOGGER)
    registry = _noop_registry()
    rt = runtime(registry, start=False)
    nothing = Wanting()
    rt.events.subscribe(nothing)
    rt.start()

    _run(autocommit_conn, wait_for_job)
    assert nothing.batches == 0

    succeeded: list[LifecycleEvent] = []
    registry.on_job_succeeded(succeeded.append)
    ids = _run(autocommit_conn, wait_for_job)
    wait_until(lambda: len(succeeded) == len(ids), what="the success hooks")
    assert nothing.count(EventKind.JOB_SUCCEEDED) == len(ids)
    assert nothing.count(EventKind.JOB_STARTED) == 0


def test_metrics_still_observe_the_queue_wait_of_every_start(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    caplog: pytest.LogCaptureFixture,
    started_built: list[ClaimedJob],
) -> None:
    pytest.importorskip("prometheus_client")
    caplog.set_level(logging.WARNING, logger=JOBS_LOGGER)
    rt = runtime(_noop_registry(), metrics_port=0)
    ids = _run(autocommit_conn, wait_for_job)
    assert rt.metrics is not None

    def observed(name: str) -> float:
        value = rt.metrics.registry.get_sample_value(  # type: ignore[union-attr]
            name, {"queue": "default", "job_type": "demand.noop"}
        )
        return 0.0 if value is None else value

    def waits() -> float:
        return observed("runledger_job_queue_wait_seconds_count")

    wait_until(lambda: waits() == len(ids), what="a queue wait per job")
    assert len(started_built) == len(ids)
