"""wait_for_run and Runtime.from_env."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

import runledger
from runledger.errors import ConfigError, RunNotFinished, WorkflowRunNotFound


def _registry(release: threading.Event) -> runledger.Registry:
    registry = runledger.Registry()

    @registry.handler("wait.step")
    def step(ctx: runledger.JobContext, payload: Any) -> dict[str, int]:
        release.wait(10)
        return {"n": 1}

    return registry


def _workflow() -> runledger.Workflow:
    return (
        runledger.WorkflowBuilder("wait")
        .result_step("b")
        .step("a", job="wait.step")
        .step("b", job="wait.step", after="a")
        .build()
    )


def test_wait_for_run_returns_the_finished_run_soon_after_it_finishes(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    release = threading.Event()
    registry = _registry(release)
    run_id = runledger.enqueue_workflow(autocommit_conn, _workflow(), registry)
    with runledger.Runtime(dsn, registry, concurrency=2, poll_interval=0.2) as rt:
        release.set()
        started = time.monotonic()
        # A long poll interval: only the NOTIFY of the run's completion can return early.
        run = runledger.wait_for_run(rt.store, run_id, timeout=20, poll_interval=15)
        waited = time.monotonic() - started
    assert run.status is runledger.RunStatus.SUCCEEDED
    assert run.result == {"n": 1}
    assert waited < 10


def test_wait_for_run_raises_run_not_finished_with_the_last_status(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    run_id = runledger.enqueue_workflow(autocommit_conn, _workflow())  # no runtime runs it
    with pytest.raises(RunNotFinished) as caught:
        runledger.wait_for_run(dsn, run_id, timeout=0.3, poll_interval=0.1)
    assert (caught.value.run_id, caught.value.status) == (run_id, "running")
    assert isinstance(caught.value, TimeoutError)


def test_wait_for_run_of_an_unknown_run_raises_workflow_run_not_found(dsn: str) -> None:
    missing = uuid.uuid4()
    with pytest.raises(WorkflowRunNotFound) as caught:
        runledger.wait_for_run(dsn, missing, timeout=1)
    assert caught.value.run_id == missing


def test_runtime_from_env_reads_runledger_variables_and_overrides_win(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNLEDGER_DSN", dsn)
    monkeypatch.setenv("RUNLEDGER_CONCURRENCY", "3")
    monkeypatch.setenv("RUNLEDGER_QUEUES", "a, b")
    runtime = runledger.Runtime.from_env(runledger.Registry(), lease_seconds=7)
    try:
        assert runtime.pool._concurrency == 3
        assert runtime.pool._queues == ("a", "b")
        assert runtime.pool._lease_seconds == 7
    finally:
        runtime.store.close()


def test_runtime_from_env_without_a_database_raises_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RUNLEDGER_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        runledger.Runtime.from_env(runledger.Registry())
    assert caught.value.name == "RUNLEDGER_DSN"
