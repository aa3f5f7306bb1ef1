"""cancel_job and cancel_workflow: queued, running, blocked and waiting work; fencing after."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from test_workflow_engine import (
    check,
    claim_jobs,
    claim_step,
    enqueue,
    finish_job,
    job_rows,
    result,
    run_step,
    state,
)

import runledger
from runledger import AttemptOutcome, JobStatus, RunStatus, StepStatus, WorkflowBuilder
from runledger.errors import JobNotFound, WorkflowRunNotFound
from runledger.postgres.attempts import finish, renew_leases
from runledger.postgres.cancellation import CANCEL_CHANNEL

Conn = psycopg.Connection[Any]
S = StepStatus


def pipeline(conn: Conn) -> uuid.UUID:
    """a -> b -> c, a -> tidy (after_terminal), x (external, root)."""
    return enqueue(
        conn,
        WorkflowBuilder("pipeline")
        .step("a", job="a")
        .step("b", job="b", after="a")
        .step("c", job="c", after="b")
        .step("tidy", job="tidy", after_terminal="a")
        .step("x", external=True),
    )


def footprint(conn: Conn) -> tuple[Any, ...]:
    """Counts and latest update times of every ledger table: what a no-op must not change."""
    row = conn.execute(
        "select (select count(*) from runledger.events),"
        "       (select count(*) from runledger.jobs),"
        "       (select max(updated_at) from runledger.jobs),"
        "       (select max(updated_at) from runledger.workflow_step_runs),"
        "       (select max(updated_at) from runledger.workflow_runs),"
        "       (select count(*) from runledger.job_attempts where finished_at is null)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def job_of(conn: Conn, run_id: uuid.UUID, key: str) -> runledger.JobRecord:
    job_id = runledger.get_workflow_run(conn, run_id).step(key).job_id
    assert job_id is not None, f"step {key!r} has no job"
    return runledger.get_job(conn, job_id)


def test_cancel_job_on_a_queued_job(conn: Conn, autocommit_conn: Conn) -> None:
    job_id = runledger.enqueue(conn, "email.send", {"to": "a@b.c"})
    conn.commit()

    assert runledger.cancel_job(conn, job_id, reason="customer asked")
    conn.commit()
    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.status, job.cancel_reason, job.attempt) == (
        JobStatus.CANCELLED,
        "customer asked",
        0,
    )
    assert job.finished_at is not None
    events = runledger.list_events(autocommit_conn, job_id=job_id)
    assert [str(e.kind) for e in events] == ["job.enqueued", "job.cancelled"]
    assert events[-1].data == {"reason": "customer asked"}
    assert claim_jobs(conn, ["email.send"]) == []


def test_cancel_job_on_a_queued_step_cancels_the_step_and_its_success_dependents(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = pipeline(conn)
    a = job_of(conn, run_id, "a")
    conn.rollback()
    assert runledger.cancel_job(conn, a.id, reason="not today")
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.RUNNING,
        {"a": S.CANCELLED, "b": S.CANCELLED, "c": S.CANCELLED, "tidy": S.QUEUED, "x": S.WAITING},
    )
    assert run.step("a").error == "not today"
    events = runledger.list_events(autocommit_conn, job_id=a.id)
    assert events[-1].kind == "job.cancelled"
    assert events[-1].data == {"reason": "not today"}


def test_cancel_job_without_reason(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = pipeline(conn)
    a = job_of(conn, run_id, "a")
    assert runledger.cancel_job(conn, a.id)
    conn.commit()
    assert runledger.get_job(autocommit_conn, a.id).cancel_reason is None
    assert runledger.list_events(autocommit_conn, job_id=a.id)[-1].data == {}
    assert check(autocommit_conn, run_id).step("a").error == "the job was cancelled"


def test_cancel_job_on_a_running_job_fences_its_late_completion(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = pipeline(conn)
    a = claim_step(conn, run_id, "a")
    assert check(autocommit_conn, run_id).step("a").status is S.RUNNING

    assert runledger.cancel_job(conn, a.id, reason="stop it")
    conn.commit()
    job = runledger.get_job(autocommit_conn, a.id)
    assert (job.status, job.lease_token, job.lease_expires_at) == (JobStatus.CANCELLED, None, None)
    attempts = runledger.list_attempts(autocommit_conn, a.id)
    assert [(x.outcome, x.error_message) for x in attempts] == [
        (AttemptOutcome.CANCELLED, "stop it")
    ]
    assert renew_leases(conn, [(a.id, a.lease_token, None)], lease_seconds=30) == set()
    conn.commit()
    cancelled = check(autocommit_conn, run_id)
    assert state(cancelled)[1] == {
        "a": S.CANCELLED, "b": S.CANCELLED, "c": S.CANCELLED, "tidy": S.QUEUED, "x": S.WAITING,
    }  # fmt: skip

    # The handler finishes anyway: fenced out, nothing released or re-enqueued.
    report = finish_job(conn, a, JobStatus.SUCCEEDED, output="too late")
    assert (report.finished, report.lost) == ((), (a.id,))
    assert report.workflow.steps == () and report.workflow.runs == ()
    after = check(autocommit_conn, run_id)
    assert state(after) == state(cancelled)
    assert after.step("a").output is None
    for key in ("b", "c"):
        assert job_rows(autocommit_conn, run_id, key) == 0
    assert runledger.get_job(autocommit_conn, a.id).status is JobStatus.CANCELLED
    # A failure report (retry or dead letter) is fenced the same way.
    retry = finish(conn, [result(a, JobStatus.QUEUED)])
    conn.commit()
    assert retry.lost == (a.id,)
    assert runledger.get_job(autocommit_conn, a.id).status is JobStatus.CANCELLED


def test_cancel_job_of_a_finished_job_returns_false_and_writes_nothing(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("done")
        .step("ok", job="ok")
        .step("bad", job="bad")
        .step("gone", job="gone"),
    )
    run_step(conn, run_id, "ok")
    run_step(conn, run_id, "bad", JobStatus.FAILED)
    gone = job_of(conn, run_id, "gone")
    assert runledger.cancel_job(conn, gone.id)
    conn.commit()
    before = footprint(autocommit_conn)

    for key in ("ok", "bad", "gone"):
        assert not runledger.cancel_job(conn, job_of(conn, run_id, key).id, reason="again")
    conn.commit()
    assert footprint(autocommit_conn) == before
    assert check(autocommit_conn, run_id).status is RunStatus.COMPLETED_WITH_ERRORS


def test_cancel_workflow_cancels_queued_running_blocked_and_waiting_steps(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("everything")
        .step("done", job="done")
        .step("running", job="running")
        .step("queued", job="queued", after="done")
        .step("blocked", job="blocked", after="running")
        .step("waiting", external=True)
        .step("later", external=True, after="running"),
    )
    run_step(conn, run_id, "done", output="kept")
    running = claim_step(conn, run_id, "running")
    before = check(autocommit_conn, run_id)
    assert state(before)[1] == {
        "done": S.SUCCEEDED, "running": S.RUNNING, "queued": S.QUEUED, "blocked": S.BLOCKED,
        "waiting": S.WAITING, "later": S.BLOCKED,
    }  # fmt: skip
    queued_job = before.step("queued").job_id
    assert queued_job is not None

    assert runledger.cancel_workflow(conn, run_id, reason="customer asked")
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.CANCELLED,
        {
            "done": S.SUCCEEDED, "running": S.CANCELLED, "queued": S.CANCELLED,
            "blocked": S.CANCELLED, "waiting": S.CANCELLED, "later": S.CANCELLED,
        },
    )  # fmt: skip
    assert run.cancel_reason == "customer asked"
    assert (run.steps_open, run.steps_active, run.steps_unsuccessful) == (0, 0, 5)
    assert run.finished_at is not None
    assert run.step("done").output == "kept"
    assert {s.error for s in run.steps if s.status is S.CANCELLED} == {"customer asked"}
    for job_id in (running.id, queued_job):
        job = runledger.get_job(autocommit_conn, job_id)
        assert (job.status, job.cancel_reason) == (JobStatus.CANCELLED, "customer asked")
    attempts = runledger.list_attempts(autocommit_conn, running.id)
    assert [a.outcome for a in attempts] == [AttemptOutcome.CANCELLED]

    events = runledger.list_events(autocommit_conn, run_id=run_id)
    tail = [(str(e.kind), e.step_key) for e in events[-8:]]
    assert sorted(tail[:2]) == [("job.cancelled", "queued"), ("job.cancelled", "running")]
    assert sorted(tail[2:7]) == sorted(
        ("step.cancelled", k) for k in ("running", "queued", "blocked", "waiting", "later")
    )
    assert tail[7] == ("run.cancelled", None)
    assert events[-1].data == {"reason": "customer asked"}

    # The running handler's late completion is fenced and releases nothing.
    report = finish_job(conn, running, output="late")
    assert report.lost == (running.id,)
    assert job_rows(autocommit_conn, run_id, "blocked") == 0
    assert state(check(autocommit_conn, run_id)) == state(run)
    assert claim_jobs(conn, ["queued", "blocked"]) == []


def test_cancel_workflow_on_a_waiting_run(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = enqueue(conn, WorkflowBuilder("signal").step("sig", external=True))
    assert runledger.cancel_workflow(conn, run_id)
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.CANCELLED, {"sig": S.CANCELLED})
    assert run.cancel_reason is None
    assert run.step("sig").error == "the run was cancelled"


def test_cancel_workflow_of_a_finished_run_returns_false_and_writes_nothing(
    conn: Conn, autocommit_conn: Conn
) -> None:
    ok = enqueue(conn, WorkflowBuilder("ok").step("ok", job="ok"))
    bad = enqueue(conn, WorkflowBuilder("bad").step("bad", job="bad"))
    gone = enqueue(conn, WorkflowBuilder("gone").step("gone", job="gone"))
    run_step(conn, ok, "ok")
    run_step(conn, bad, "bad", JobStatus.FAILED)
    assert runledger.cancel_workflow(conn, gone, reason="first")
    conn.commit()
    before = footprint(autocommit_conn)

    for run_id in (ok, bad, gone):
        assert not runledger.cancel_workflow(conn, run_id, reason="again")
    conn.commit()
    assert not runledger.cancel_workflow(autocommit_conn, ok)
    assert footprint(autocommit_conn) == before
    assert [check(autocommit_conn, r).status for r in (ok, bad, gone)] == [
        RunStatus.SUCCEEDED,
        RunStatus.COMPLETED_WITH_ERRORS,
        RunStatus.CANCELLED,
    ]
    assert runledger.get_workflow_run(autocommit_conn, gone).cancel_reason == "first"


def test_cancel_of_an_unknown_id_raises(conn: Conn) -> None:
    missing = uuid.uuid4()
    with pytest.raises(JobNotFound) as job:
        runledger.cancel_job(conn, missing)
    assert job.value.job_id == missing
    with pytest.raises(WorkflowRunNotFound) as run:
        runledger.cancel_workflow(conn, missing)
    assert run.value.run_id == missing
    conn.execute("select 1")  # the caller's transaction is still usable


def test_a_cancel_in_a_rolled_back_transaction_changes_nothing(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = pipeline(conn)
    a = claim_step(conn, run_id, "a")
    plain = runledger.enqueue(conn, "email.send")
    conn.commit()
    before_footprint = footprint(autocommit_conn)
    before = state(check(autocommit_conn, run_id))

    with conn.transaction(force_rollback=True):
        assert runledger.cancel_job(conn, plain)
        assert runledger.cancel_job(conn, a.id)
        assert runledger.cancel_workflow(conn, run_id, reason="oops")
        assert runledger.get_workflow_run(conn, run_id).status is RunStatus.CANCELLED
    conn.commit()

    assert footprint(autocommit_conn) == before_footprint
    assert state(check(autocommit_conn, run_id)) == before
    assert runledger.get_job(autocommit_conn, plain).status is JobStatus.QUEUED
    # The running job still holds its lease and finishes normally.
    report = finish_job(conn, a, output="fine")
    assert report.lost == ()
    assert check(autocommit_conn, run_id).step("b").status is S.QUEUED


def test_cancel_notifies_the_cancel_channel_on_commit(conn: Conn, dsn: str) -> None:
    run_id = pipeline(conn)
    a = claim_step(conn, run_id, "a")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"listen {CANCEL_CHANNEL}")
        runledger.cancel_job(conn, a.id)
        assert list(listener.notifies(timeout=0.2, stop_after=1)) == []  # not before commit
        conn.commit()
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.payload for n in got] == [str(a.id)]
