"""``JobContext``: what a handler is told, ``ctx.conn``'s transaction and ``ctx.cancelled``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, JobStatus

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]
WaitForJob = Callable[..., runledger.JobRecord]


def test_context_describes_a_standalone_job_and_its_attempt(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()
    seen: list[runledger.JobContext] = []

    @registry.handler("inspect", queue="inspections", max_attempts=4)
    def inspect(ctx: runledger.JobContext, payload: Any) -> Any:
        seen.append(ctx)
        ctx.logger.info("inspecting %s", payload)
        return None

    runtime(registry, queues=["inspections"])
    job_id = runledger.enqueue(autocommit_conn, "inspect", {"n": 1}, queue="inspections")
    wait_for_job(job_id, "succeeded")

    [ctx] = seen
    assert ctx.job_id == job_id
    assert ctx.job_type == "inspect"
    assert (ctx.attempt, ctx.max_attempts) == (1, 4)
    assert ctx.queue == "inspections"
    assert ctx.workflow_run_id is None
    assert ctx.step_key is None
    assert ctx.workflow_input is None
    assert dict(ctx.upstream) == {}
    assert isinstance(ctx.logger, logging.LoggerAdapter)
    assert ctx.logger.extra is not None
    assert ctx.logger.extra["job_id"] == str(job_id)
    assert not ctx.cancelled.is_set()


def test_context_of_a_workflow_step_has_run_step_input_and_upstream_outputs(
    dsn: str, autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory
) -> None:
    registry = runledger.Registry()
    seen: dict[str, runledger.JobContext] = {}

    @registry.handler("wf.fetch")
    def fetch(ctx: runledger.JobContext, payload: Any) -> Any:
        seen["fetch"] = ctx
        return {"amount": 12}

    @registry.handler("wf.rate")
    def rate(ctx: runledger.JobContext, payload: Any) -> Any:
        seen["rate"] = ctx
        return {"rate": 0.5}

    @registry.handler("wf.charge")
    def charge(ctx: runledger.JobContext, payload: Any) -> Any:
        seen["charge"] = ctx
        return ctx.upstream["fetch"]["amount"] * ctx.upstream["rate"]["rate"]  # type: ignore[index, operator]

    workflow = (
        runledger.WorkflowBuilder("invoice.process")
        .input({"invoice_id": "42"})
        .step("fetch", job="wf.fetch")
        .step("rate", job="wf.rate")
        .step("charge", job="wf.charge", after=["fetch", "rate"])
        .result_step("charge")
        .build()
    )
    runtime(registry)
    run_id = runledger.enqueue_workflow(autocommit_conn, workflow)

    run = runledger.wait_for_run(dsn, run_id, timeout=10, poll_interval=0.2)

    assert run.status is runledger.RunStatus.SUCCEEDED
    assert run.result == 6.0
    ctx = seen["charge"]
    assert ctx.workflow_run_id == run_id
    assert ctx.step_key == "charge"
    assert ctx.job_type == "wf.charge"
    assert ctx.workflow_input == {"invoice_id": "42"}
    assert dict(ctx.upstream) == {"fetch": {"amount": 12}, "rate": {"rate": 0.5}}
    assert ctx.job_id == run.step("charge").job_id
    assert seen["fetch"].step_key == "fetch"
    assert dict(seen["fetch"].upstream) == {}


@pytest.fixture
def side_effects(autocommit_conn: psycopg.Connection[Any]) -> Iterator[Callable[[], list[str]]]:
    """A table handlers write to through ``ctx.conn``; returns a reader of its committed rows."""
    autocommit_conn.execute("create table public.side_effects (note text not null)")

    def committed() -> list[str]:
        rows = autocommit_conn.execute("select note from public.side_effects order by note")
        return [row[0] for row in rows.fetchall()]

    yield committed


def test_ctx_conn_writes_commit_together_with_the_jobs_success(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    side_effects: Callable[[], list[str]],
) -> None:
    registry = runledger.Registry()

    @registry.handler("record")
    def record(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.conn.execute("insert into public.side_effects (note) values (%s)", (payload,))
        return "written"

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "record", "hello")

    assert wait_for_job(job_id, "succeeded").output == "written"
    assert side_effects() == ["hello"]


def test_ctx_conn_writes_are_rolled_back_when_the_handler_raises(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    side_effects: Callable[[], list[str]],
) -> None:
    registry = runledger.Registry()

    @registry.handler("record.then.fail", max_attempts=1)
    def record_then_fail(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.conn.execute("insert into public.side_effects (note) values (%s)", (payload,))
        raise RuntimeError("after the write")

    @registry.handler("record")
    def record(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.conn.execute("insert into public.side_effects (note) values (%s)", (payload,))
        return None

    runtime(registry, concurrency=1)
    failing = runledger.enqueue(autocommit_conn, "record.then.fail", "lost")
    assert wait_for_job(failing, "failed").last_error == "RuntimeError: after the write"
    # A later job's write through ctx.conn commits: the failed one left nothing half-open.
    kept = runledger.enqueue(autocommit_conn, "record", "kept")
    wait_for_job(kept, "succeeded")

    assert side_effects() == ["kept"]


def test_ctx_conn_writes_after_a_committed_cancel_are_rolled_back_and_the_job_stays_cancelled(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_until: WaitUntil,
    side_effects: Callable[[], list[str]],
) -> None:
    registry = runledger.Registry()
    started = threading.Event()
    release = threading.Event()
    returned = threading.Event()

    @registry.handler("slow.record")
    def slow_record(ctx: runledger.JobContext, payload: Any) -> Any:
        started.set()
        release.wait(10)
        ctx.conn.execute("insert into public.side_effects (note) values (%s)", (payload,))
        returned.set()
        return "too late"

    rt = runtime(registry, listen=True)
    job_id = runledger.enqueue(autocommit_conn, "slow.record", "fenced")
    try:
        assert started.wait(5)
        assert runledger.cancel_job(autocommit_conn, job_id, reason="changed my mind") is True
    finally:
        release.set()
    assert returned.wait(5)
    # The handler's outcome has been dealt with once the pool no longer holds the job.
    wait_until(lambda: not rt.pool.of_job(job_id), 5, "the runtime to drop the job")

    job = runledger.get_job(autocommit_conn, job_id)
    assert job.status is JobStatus.CANCELLED
    assert job.output is None
    assert side_effects() == []
    [attempt] = runledger.list_attempts(autocommit_conn, job_id)
    assert attempt.outcome is AttemptOutcome.CANCELLED


def test_ctx_cancelled_is_set_for_the_running_handler_after_cancel_job(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory
) -> None:
    registry = runledger.Registry()
    started = threading.Event()
    saw: list[bool] = []
    finished = threading.Event()

    @registry.handler("cancellable")
    def cancellable(ctx: runledger.JobContext, payload: Any) -> Any:
        started.set()
        saw.append(ctx.cancelled.wait(10))
        finished.set()
        return None

    runtime(registry, listen=True)  # the cancel's NOTIFY reaches the handler at once
    job_id = runledger.enqueue(autocommit_conn, "cancellable")
    assert started.wait(5)
    cancelled_at = time.monotonic()
    assert runledger.cancel_job(autocommit_conn, job_id) is True

    assert finished.wait(10)
    assert saw == [True]
    assert time.monotonic() - cancelled_at < 2
    assert runledger.get_job(autocommit_conn, job_id).status is JobStatus.CANCELLED


def test_ctx_heartbeat_renews_the_lease_and_reports_it_lost_after_cancel(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory
) -> None:
    registry = runledger.Registry()
    started = threading.Event()
    proceed = threading.Event()
    beats: list[bool] = []
    done = threading.Event()

    @registry.handler("beating")
    def beating(ctx: runledger.JobContext, payload: Any) -> Any:
        beats.append(ctx.heartbeat())
        started.set()
        proceed.wait(10)
        beats.append(ctx.heartbeat())
        beats.append(ctx.cancelled.is_set())
        done.set()
        return None

    # No listener: only the handler's own heartbeat can find out about the cancel quickly.
    runtime(registry, listen=False, lease_seconds=30.0)
    job_id = runledger.enqueue(autocommit_conn, "beating")
    try:
        assert started.wait(5)
        runledger.cancel_job(autocommit_conn, job_id)
    finally:
        proceed.set()

    assert done.wait(5)
    assert beats == [True, False, True]
