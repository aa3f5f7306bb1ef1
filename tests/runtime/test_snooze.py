"""``raise runledger.Snooze(after=...)``: the job goes back to its queue for later without
spending an attempt; the attempt row says ``snoozed``, a ``job.snoozed`` event is written with
it, and hooks, the log and the metrics see it as its own outcome."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, EventKind, JobStatus, RunStatus, StepStatus
from runledger.core.status import RetryReason
from tests.runtime.conftest import RuntimeFactory, WaitForJob, WaitUntil
from tests.runtime.test_metrics import scrape, value

FAST = runledger.RetryPolicy(base=0.0, jitter=0.0)


def test_a_snoozed_job_runs_again_later_with_its_attempt_count_unchanged(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runledger.jobs")
    registry = runledger.Registry()
    seen: list[int] = []
    hooked: list[runledger.LifecycleEvent] = []

    @registry.handler("poll.remote", max_attempts=3)
    def poll(ctx: runledger.JobContext, payload: Any) -> Any:
        seen.append(ctx.attempt)
        if len(seen) == 1:
            raise runledger.Snooze(after=0.3)
        return "ready"

    registry.on(EventKind.JOB_SNOOZED)(hooked.append)
    rt = runtime(registry, metrics_port=0)
    job_id = runledger.enqueue(autocommit_conn, "poll.remote")

    job = wait_for_job(job_id, "succeeded")

    assert seen == [1, 1]  # the run after the snooze is attempt 1 again
    assert (job.attempt, job.max_attempts, job.output) == (1, 3, "ready")
    snoozed, succeeded = runledger.list_attempts(autocommit_conn, job_id)
    assert (snoozed.attempt, snoozed.outcome) == (1, AttemptOutcome.SNOOZED)
    assert (succeeded.attempt, succeeded.outcome) == (1, AttemptOutcome.SUCCEEDED)
    assert snoozed.lease_token != succeeded.lease_token
    assert (snoozed.error_type, snoozed.error_message, snoozed.error_traceback) == (None,) * 3
    assert snoozed.retry_reason is RetryReason.HANDLER
    assert snoozed.retry_at is not None and snoozed.finished_at is not None
    # run_at = now() + after, in the transaction that wrote the attempt's end
    assert snoozed.retry_at - snoozed.finished_at == datetime.timedelta(seconds=0.3)
    assert succeeded.started_at >= snoozed.retry_at

    events = runledger.list_events(autocommit_conn, job_id=job_id)
    assert [e.kind for e in events] == [
        EventKind.JOB_ENQUEUED, EventKind.JOB_STARTED, EventKind.JOB_SNOOZED,
        EventKind.JOB_STARTED, EventKind.JOB_SUCCEEDED,
    ]  # fmt: skip
    event = events[2]
    assert event.attempt == 1
    assert event.data["outcome"] == "snoozed"
    assert datetime.datetime.fromisoformat(event.data["retry_at"]) == snoozed.retry_at

    wait_until(lambda: hooked, what="the job.snoozed hook")
    [hook] = hooked
    assert (hook.job_id, hook.attempt, hook.retry_at) == (job_id, 1, snoozed.retry_at)
    assert hook.error is None
    lines = [r for r in caplog.records if r.name == "runledger.jobs" and "snoozed" in r.message]
    [line] = lines
    assert line.levelno == logging.INFO
    assert f"poll.remote[{job_id}] snoozed (attempt 1/3, not counted)" in line.getMessage()
    assert rt.metrics is not None
    port = rt.metrics.port
    labels = {"queue": "default", "job_type": "poll.remote"}
    wait_until(
        lambda: value(scrape(port), "runledger_jobs_total", outcome="succeeded", **labels) == 1,
        what="the success counted",
    )
    assert value(scrape(port), "runledger_jobs_total", outcome="snoozed", **labels) == 1


def test_snoozing_five_times_leaves_both_of_two_attempts_to_spend(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()
    seen: list[int] = []

    @registry.handler("poll.often", max_attempts=2, retry=FAST)
    def poll(ctx: runledger.JobContext, payload: Any) -> Any:
        seen.append(ctx.attempt)
        if len(seen) <= 5:
            raise runledger.Snooze(after=datetime.timedelta(0))
        if len(seen) == 6:
            raise RuntimeError("the remote broke once")  # spends attempt 1
        return len(seen)

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "poll.often")

    job = wait_for_job(job_id, "succeeded")

    assert seen == [1, 1, 1, 1, 1, 1, 2]
    assert (job.attempt, job.output) == (2, 7)
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [
        *[(1, AttemptOutcome.SNOOZED)] * 5,
        (1, AttemptOutcome.FAILED),
        (2, AttemptOutcome.SUCCEEDED),
    ]


def test_a_snooze_commits_the_handlers_ctx_conn_writes_in_the_same_transaction(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    autocommit_conn.execute("create table polls (n integer primary key)")
    registry = runledger.Registry()

    @registry.handler("poll.conn")
    def poll(ctx: runledger.JobContext, payload: Any) -> Any:
        n = ctx.conn.execute("select count(*) from polls").fetchone()[0]  # type: ignore[index]
        ctx.conn.execute("insert into polls values (%s)", (n + 1,))
        if n == 0:
            raise runledger.Snooze(after=0)
        return n + 1

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "poll.conn")

    job = wait_for_job(job_id, "succeeded")

    assert (job.attempt, job.output) == (1, 2)
    assert [a.outcome for a in runledger.list_attempts(autocommit_conn, job_id)] == [
        AttemptOutcome.SNOOZED,
        AttemptOutcome.SUCCEEDED,
    ]
    # The first run's insert and its job.snoozed event were committed by one transaction.
    [(first_xid,)] = autocommit_conn.execute("select xmin::text from polls where n = 1")
    [(snooze_xid,)] = autocommit_conn.execute(
        "select xmin::text from runledger.events where kind = 'job.snoozed' and job_id = %s",
        (job_id,),
    )
    assert first_xid == snooze_xid


def test_a_snoozed_step_stays_active_in_its_run_and_holds_no_lease_for_the_reaper(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()
    runs: list[str] = []

    @registry.handler("step.poll", timeout_seconds=1)
    def step_poll(ctx: runledger.JobContext, payload: Any) -> Any:
        runs.append(payload["step"])
        if payload["step"] == "a" and runs.count("a") == 1:
            raise runledger.Snooze(after=3600)
        return payload["step"]

    workflow = (
        runledger.WorkflowBuilder("snoozing")
        .step("a", job="step.poll", payload={"step": "a"})
        .step("b", job="step.poll", payload={"step": "b"}, after=["a"])
        .build()
    )
    run_id = runledger.enqueue_workflow(autocommit_conn, workflow)
    rt = runtime(registry)
    a_job = runledger.get_workflow_run(autocommit_conn, run_id).step("a").job_id
    assert a_job is not None

    def snoozed() -> bool:
        return bool(runledger.list_attempts(autocommit_conn, a_job)) and (
            runledger.list_attempts(autocommit_conn, a_job)[-1].outcome is AttemptOutcome.SNOOZED
        )

    wait_until(snoozed, what="step a snoozed")
    job = runledger.get_job(autocommit_conn, a_job)
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 0)
    assert (job.lease_token, job.lease_expires_at) == (None, None)
    row = autocommit_conn.execute(
        "select deadline_at, run_at > now() + interval '59 minutes' from runledger.jobs "
        "where id = %s",
        (a_job,),
    ).fetchone()
    assert row == (None, True)
    run = runledger.get_workflow_run(autocommit_conn, run_id)
    assert run.status is RunStatus.RUNNING
    assert run.steps_active == 1 and run.steps_open == 2
    steps = {s.step_key: s.status for s in run.steps}
    assert steps == {"a": StepStatus.QUEUED, "b": StepStatus.BLOCKED}
    # The reaper has nothing to take back: no lease, no deadline.
    rt.reap_now()
    assert len(runledger.list_attempts(autocommit_conn, a_job)) == 1
    assert runledger.get_job(autocommit_conn, a_job).status is JobStatus.QUEUED

    # Due now (as if the hour had passed): it runs, and the run goes on.
    autocommit_conn.execute("update runledger.jobs set run_at = now() where id = %s", (a_job,))
    wait_until(
        lambda: runledger.get_workflow_run(autocommit_conn, run_id).status is RunStatus.SUCCEEDED,
        what="the run to succeed",
    )
    assert runs == ["a", "a", "b"]
    assert runledger.get_job(autocommit_conn, a_job).attempt == 1
