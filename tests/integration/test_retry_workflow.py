"""retry_workflow: a run that finished completed_with_errors or cancelled runs its failed and
cancelled steps again, keeps what succeeded, and finishes like any run; runs that cannot be
retried are refused with typed errors and nothing written."""

from __future__ import annotations

import datetime
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
    run_step,
    state,
)

import runledger
from runledger import JobStatus, RunStatus, StepStatus, WorkflowBuilder
from runledger.errors import InvalidId, RunNotRetryable, WorkflowRunNotFound
from runledger.postgres.retention import prune_runs

Conn = psycopg.Connection[Any]
S = StepStatus


def chain(conn: Conn) -> uuid.UUID:
    """a -> b -> c, with b's only attempt failing: completed_with_errors, c cancelled."""
    run_id = enqueue(
        conn,
        WorkflowBuilder("retry.chain")
        .step("a", job="a")
        .step("b", job="b", after="a", max_attempts=1)
        .step("c", job="c", after="b")
        .result_step("c"),
    )
    run_step(conn, run_id, "a", output={"from": "a"})
    run_step(conn, run_id, "b", JobStatus.FAILED)
    return run_id


def kinds(conn: Conn, run_id: uuid.UUID, after: int = 0) -> list[tuple[str, str | None]]:
    return [
        (str(e.kind), e.step_key)
        for e in runledger.list_events(conn, run_id=run_id)
        if e.id > after
    ]


def last_event_id(conn: Conn, run_id: uuid.UUID) -> int:
    return runledger.list_events(conn, run_id=run_id)[-1].id


def test_a_failed_step_runs_again_and_the_run_finishes_with_the_earlier_output_kept(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = chain(conn)
    before = check(autocommit_conn, run_id)
    assert state(before) == (RunStatus.COMPLETED_WITH_ERRORS, {"a": S.SUCCEEDED, "b": S.FAILED,
                                                              "c": S.CANCELLED})  # fmt: skip
    b_job = before.step("b").job_id
    mark = last_event_id(autocommit_conn, run_id)

    assert runledger.retry_workflow(conn, run_id) == ["b", "c"]
    conn.commit()

    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.RUNNING, {"a": S.SUCCEEDED, "b": S.QUEUED, "c": S.BLOCKED})
    assert (run.steps_open, run.steps_active, run.steps_unsuccessful) == (2, 1, 0)
    assert (run.finished_at, run.step("b").error, run.step("c").deps_pending) == (None, None, 1)
    assert run.step("a").output == {"from": "a"}
    assert run.step("b").job_id == b_job  # the same job, back in the queue
    job = runledger.get_job(autocommit_conn, b_job)
    assert (job.status, job.attempt, job.finished_at) == (JobStatus.QUEUED, 0, None)
    assert kinds(autocommit_conn, run_id, after=mark) == [
        ("run.retried", None), ("job.requeued", "b"), ("step.queued", "b"),
    ]  # fmt: skip
    retried = runledger.list_events(autocommit_conn, run_id=run_id)[-3]
    assert retried.data == {"from": "completed_with_errors", "to": "running", "steps": ["b", "c"]}

    b = claim_step(conn, run_id, "b")
    assert (b.id, b.attempt) == (b_job, 1)
    assert b.upstream == {"a": {"from": "a"}}
    finish_job(conn, b, output={"from": "b"})
    run_step(conn, run_id, "c", output={"from": "c"})
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.SUCCEEDED, {"a": S.SUCCEEDED, "b": S.SUCCEEDED,
                                                "c": S.SUCCEEDED})  # fmt: skip
    assert run.result == {"from": "c"}
    assert [a.outcome for a in runledger.list_attempts(autocommit_conn, b_job)] == [
        runledger.AttemptOutcome.FAILED, runledger.AttemptOutcome.SUCCEEDED,
    ]  # fmt: skip
    # a ran once, in all.
    assert len(runledger.list_jobs(autocommit_conn, workflow_run_id=run_id, job_type="a")) == 1


def test_a_cancelled_run_queues_its_jobs_and_waits_for_its_signals_again(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("retry.cancelled")
        .step("a", job="a")
        .step("b", job="b")
        .step("x", external=True)
        .step("after_a", job="after_a", after="a")
        .step("join", job="join", after=["a", "b", "x"]),
    )
    run_step(conn, run_id, "b", output={"from": "b"})
    claim_step(conn, run_id, "a")  # running when the run is cancelled
    assert runledger.cancel_workflow(conn, run_id, reason="oops")
    conn.commit()
    assert runledger.get_workflow_run(autocommit_conn, run_id).cancel_reason == "oops"

    assert runledger.retry_workflow(conn, run_id) == ["a", "x", "after_a", "join"]
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.RUNNING,
        {"a": S.QUEUED, "b": S.SUCCEEDED, "x": S.WAITING, "after_a": S.BLOCKED,
         "join": S.BLOCKED},
    )  # fmt: skip
    assert (run.cancel_reason, run.step("join").deps_pending) == (None, 2)

    run_step(conn, run_id, "a")
    run_step(conn, run_id, "after_a")
    assert runledger.complete_external_step(conn, run_id, "x", output={"ok": True})
    conn.commit()
    run_step(conn, run_id, "join")
    assert check(autocommit_conn, run_id).status is RunStatus.SUCCEEDED


def test_a_cancelled_waiting_run_comes_back_waiting(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = enqueue(conn, WorkflowBuilder("retry.wait").step("x", external=True))
    assert runledger.cancel_workflow(conn, run_id)
    conn.commit()
    assert runledger.retry_workflow(conn, run_id) == ["x"]
    conn.commit()
    assert state(check(autocommit_conn, run_id)) == (RunStatus.WAITING, {"x": S.WAITING})


def test_a_step_after_a_retried_step_waits_for_it_and_gets_a_new_job(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("retry.terminal")
        .step("a", job="a", max_attempts=1)
        .step("b", job="b", after_terminal="a"),
    )
    run_step(conn, run_id, "a", JobStatus.FAILED)
    first_b = run_step(conn, run_id, "b", JobStatus.FAILED)
    assert check(autocommit_conn, run_id).status is RunStatus.COMPLETED_WITH_ERRORS

    assert runledger.retry_workflow(conn, run_id) == ["a", "b"]
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.RUNNING, {"a": S.QUEUED, "b": S.BLOCKED})
    assert run.step("b").job_id is None

    run_step(conn, run_id, "a")
    second_b = run_step(conn, run_id, "b")
    assert second_b.id != first_b.id
    assert second_b.upstream == {"a": None}
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.SUCCEEDED, {"a": S.SUCCEEDED, "b": S.SUCCEEDED})
    assert runledger.get_job(autocommit_conn, first_b.id).status is JobStatus.FAILED


def test_an_external_failure_stands_and_so_do_the_steps_that_needed_it(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("retry.external")
        .step("a", job="a", max_attempts=1)
        .step("x", external=True)
        .step("after_x", job="after_x", after="x")
        .step("side", job="side"),
    )
    assert runledger.fail_external_step(conn, run_id, "x", "rejected")
    conn.commit()
    run_step(conn, run_id, "a", JobStatus.FAILED)
    run_step(conn, run_id, "side")
    assert check(autocommit_conn, run_id).status is RunStatus.COMPLETED_WITH_ERRORS

    assert runledger.retry_workflow(conn, run_id) == ["a"]
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.RUNNING,
        {"a": S.QUEUED, "x": S.FAILED, "after_x": S.CANCELLED, "side": S.SUCCEEDED},
    )
    assert run.steps_unsuccessful == 2
    run_step(conn, run_id, "a")
    assert check(autocommit_conn, run_id).status is RunStatus.COMPLETED_WITH_ERRORS

    # Now its only failures are the external one and what needed it: nothing to run again.
    with pytest.raises(RunNotRetryable) as raised:
        runledger.retry_workflow(conn, run_id)
    assert raised.value.status == "completed_with_errors"


def test_runs_that_cannot_be_retried_are_refused_and_the_transaction_stays_usable(
    conn: Conn, autocommit_conn: Conn
) -> None:
    running = enqueue(conn, WorkflowBuilder("retry.open").step("o", job="open"))
    done = enqueue(conn, WorkflowBuilder("retry.done").step("d", job="d"))
    run_step(conn, done, "d")
    with conn.transaction():
        other = runledger.enqueue(conn, "retry.other", {})
        with pytest.raises(RunNotRetryable) as still:
            runledger.retry_workflow(conn, running)
        with pytest.raises(RunNotRetryable) as succeeded:
            runledger.retry_workflow(conn, done)
        with pytest.raises(WorkflowRunNotFound):
            runledger.retry_workflow(conn, uuid.uuid4())
        assert runledger.get_job(conn, other).status is JobStatus.QUEUED
    assert (still.value.status, succeeded.value.status) == ("running", "succeeded")
    assert "still running" in str(still.value)
    with pytest.raises(InvalidId):
        runledger.retry_workflow(conn, "nope")  # type: ignore[arg-type]
    assert check(autocommit_conn, running).status is RunStatus.RUNNING

    # A retried run is open again: a second retry is refused until it has finished.
    run_id = chain(conn)
    runledger.retry_workflow(conn, run_id)
    conn.commit()
    with pytest.raises(RunNotRetryable):
        runledger.retry_workflow(conn, run_id)
    conn.rollback()


def test_a_pruned_run_is_not_found(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = chain(conn)
    autocommit_conn.execute(
        "update runledger.workflow_runs set finished_at = finished_at - interval '40 days' "
        "where id = %s",
        (run_id,),
    )
    with conn.transaction():
        assert prune_runs(conn, JobStatus.FAILED, datetime.timedelta(days=30)).runs == 1
    conn.commit()
    with pytest.raises(WorkflowRunNotFound):
        runledger.retry_workflow(conn, run_id)


def test_a_step_whose_job_was_deleted_by_hand_gets_a_new_job(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = chain(conn)
    b_job = runledger.get_workflow_run(conn, run_id).step("b").job_id
    autocommit_conn.execute("delete from runledger.jobs where id = %s", (b_job,))

    assert runledger.retry_workflow(conn, run_id) == ["b", "c"]
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run)[1] == {"a": S.SUCCEEDED, "b": S.QUEUED, "c": S.BLOCKED}
    new_b = run.step("b").job_id
    assert new_b not in (None, b_job)
    (job,) = claim_jobs(conn, ["b"])
    assert job.id == new_b
