"""External steps: complete_external_step and fail_external_step on the caller's connection."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from test_workflow_engine import check, enqueue, job_rows, run_step, state

import runledger
from runledger import JobStatus, RunStatus, StepStatus, WorkflowBuilder
from runledger.errors import (
    ExternalStepConflict,
    NotAnExternalStep,
    PayloadNotSerializable,
    StepNotFound,
    StepNotWaiting,
)

Conn = psycopg.Connection[Any]
S = StepStatus


def approval(conn: Conn) -> uuid.UUID:
    """prepare -> approve (external) -> ship, and notify after_terminal approve."""
    run_id = enqueue(
        conn,
        WorkflowBuilder("approval")
        .step("prepare", job="prepare")
        .step("approve", external=True, after="prepare")
        .step("ship", job="ship", after="approve")
        .step("notify", job="notify", after_terminal="approve"),
    )
    run_step(conn, run_id, "prepare")
    return run_id


def footprint(conn: Conn, run_id: uuid.UUID) -> tuple[Any, ...]:
    """Everything a signal could write about the run: events, step and run rows, jobs."""
    row = conn.execute(
        "select (select count(*) from runledger.events where workflow_run_id = %(id)s),"
        "       (select count(*) from runledger.jobs where workflow_run_id = %(id)s),"
        "       (select max(updated_at) from runledger.workflow_step_runs"
        "         where workflow_run_id = %(id)s),"
        "       (select updated_at from runledger.workflow_runs where id = %(id)s)",
        {"id": run_id},
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_completion_releases_dependents_and_stores_output_and_posted_at(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    assert check(autocommit_conn, run_id).step("approve").status is S.WAITING

    assert runledger.complete_external_step(conn, run_id, "approve", output={"by": "ann"})
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.RUNNING,
        {"prepare": S.SUCCEEDED, "approve": S.SUCCEEDED, "ship": S.QUEUED, "notify": S.QUEUED},
    )
    approve = run.step("approve")
    assert approve.output == {"by": "ann"}
    assert approve.posted_at is not None
    assert approve.finished_at is not None
    assert approve.job_id is None
    ship = runledger.get_job(autocommit_conn, run.step("ship").job_id)  # type: ignore[arg-type]
    assert (ship.status, ship.step_key) == (JobStatus.QUEUED, "ship")
    events = [str(e.kind) for e in runledger.list_events(autocommit_conn, run_id=run_id)]
    assert events.count("step.succeeded") == 2


def test_repeating_the_same_completion_returns_false_and_writes_nothing(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    assert runledger.complete_external_step(conn, run_id, "approve", output={"by": "ann"})
    conn.commit()
    before = footprint(autocommit_conn, run_id)

    assert not runledger.complete_external_step(conn, run_id, "approve", output={"by": "ann"})
    conn.commit()
    assert not runledger.complete_external_step(
        autocommit_conn, run_id, "approve", output={"by": "ann"}
    )
    assert footprint(autocommit_conn, run_id) == before
    assert job_rows(autocommit_conn, run_id, "ship") == 1
    check(autocommit_conn, run_id)


def test_repeating_a_completion_without_output_is_a_no_op(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    assert runledger.complete_external_step(autocommit_conn, run_id, "approve")
    before = footprint(autocommit_conn, run_id)
    assert not runledger.complete_external_step(autocommit_conn, run_id, "approve", output=None)
    assert footprint(autocommit_conn, run_id) == before


def test_a_different_output_raises_external_step_conflict(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    runledger.complete_external_step(autocommit_conn, run_id, "approve", output={"by": "ann"})
    before = footprint(autocommit_conn, run_id)

    with pytest.raises(ExternalStepConflict) as caught:
        runledger.complete_external_step(conn, run_id, "approve", output={"by": "bob"})
    assert (caught.value.run_id, caught.value.step_key) == (run_id, "approve")
    assert caught.value.status == "succeeded"
    assert caught.value.existing_output == {"by": "ann"}
    conn.commit()  # the caller's transaction is still usable
    assert footprint(autocommit_conn, run_id) == before
    assert check(autocommit_conn, run_id).step("approve").output == {"by": "ann"}


def test_failing_a_completed_step_raises_external_step_conflict(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    runledger.complete_external_step(autocommit_conn, run_id, "approve", output=1)
    with pytest.raises(ExternalStepConflict) as caught:
        runledger.fail_external_step(conn, run_id, "approve", reason="too late")
    assert (caught.value.status, caught.value.existing_output) == ("succeeded", 1)
    conn.rollback()
    assert check(autocommit_conn, run_id).step("approve").status is S.SUCCEEDED


def test_completing_a_failed_step_raises_external_step_conflict(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    assert runledger.fail_external_step(autocommit_conn, run_id, "approve", reason="rejected")
    before = footprint(autocommit_conn, run_id)

    with pytest.raises(ExternalStepConflict) as caught:
        runledger.complete_external_step(conn, run_id, "approve", output={"by": "ann"})
    assert (caught.value.status, caught.value.existing_output) == ("failed", None)
    conn.rollback()
    # The same failure again is a no-op; a different reason is a conflict.
    assert not runledger.fail_external_step(autocommit_conn, run_id, "approve", "rejected")
    with pytest.raises(ExternalStepConflict):
        runledger.fail_external_step(autocommit_conn, run_id, "approve", reason="other")
    assert footprint(autocommit_conn, run_id) == before
    run = check(autocommit_conn, run_id)
    assert run.step("approve").status is S.FAILED
    assert run.step("approve").error == "rejected"


def test_completing_a_blocked_step_raises_step_not_waiting(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("approval")
        .step("prepare", job="prepare")
        .step("approve", external=True, after="prepare"),
    )
    before = footprint(autocommit_conn, run_id)
    with pytest.raises(StepNotWaiting) as caught:
        runledger.complete_external_step(conn, run_id, "approve", output=1)
    assert (caught.value.run_id, caught.value.step_key, caught.value.status) == (
        run_id,
        "approve",
        "blocked",
    )
    with pytest.raises(StepNotWaiting) as failing:
        runledger.fail_external_step(conn, run_id, "approve", reason="no")
    assert failing.value.status == "blocked"
    conn.commit()
    assert footprint(autocommit_conn, run_id) == before
    check(autocommit_conn, run_id)


def test_completing_a_cancelled_step_raises_step_not_waiting(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    assert runledger.cancel_workflow(autocommit_conn, run_id, reason="stop")
    with pytest.raises(StepNotWaiting) as caught:
        runledger.complete_external_step(conn, run_id, "approve", output=1)
    assert caught.value.status == "cancelled"
    conn.rollback()
    assert check(autocommit_conn, run_id).status is RunStatus.CANCELLED


def test_a_job_step_raises_not_an_external_step(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = approval(conn)
    with pytest.raises(NotAnExternalStep) as caught:
        runledger.complete_external_step(conn, run_id, "ship", output=1)
    assert (caught.value.run_id, caught.value.step_key, caught.value.kind) == (
        run_id,
        "ship",
        "job",
    )
    with pytest.raises(NotAnExternalStep):
        runledger.fail_external_step(conn, run_id, "prepare", reason="no")
    conn.rollback()
    check(autocommit_conn, run_id)


def test_an_unknown_step_or_run_raises_step_not_found(conn: Conn) -> None:
    run_id = approval(conn)
    with pytest.raises(StepNotFound) as caught:
        runledger.complete_external_step(conn, run_id, "nope")
    assert (caught.value.run_id, caught.value.step_key) == (run_id, "nope")
    other = uuid.uuid4()
    with pytest.raises(StepNotFound) as unknown_run:
        runledger.fail_external_step(conn, other, "approve", reason="x")
    assert unknown_run.value.run_id == other


def test_an_output_that_is_not_json_is_refused_before_any_write(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    before = footprint(autocommit_conn, run_id)
    with pytest.raises(PayloadNotSerializable):
        runledger.complete_external_step(conn, run_id, "approve", output={"at": object()})  # type: ignore[dict-item]
    conn.commit()
    assert footprint(autocommit_conn, run_id) == before


def test_failing_cancels_success_dependents_and_releases_after_terminal_ones(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("approval")
        .step("approve", external=True)
        .step("ship", job="ship", after="approve")
        .step("invoice", job="invoice", after="ship")
        .step("notify", job="notify", after_terminal="approve"),
    )
    assert runledger.fail_external_step(conn, run_id, "approve", reason="rejected")
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.RUNNING,
        {"approve": S.FAILED, "ship": S.CANCELLED, "invoice": S.CANCELLED, "notify": S.QUEUED},
    )
    assert run.step("approve").posted_at is not None
    assert run.step("approve").output is None
    assert job_rows(autocommit_conn, run_id, "ship") == 0
    run_step(conn, run_id, "notify")
    run = check(autocommit_conn, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert run.steps_unsuccessful == 3


def test_a_completion_in_a_rolled_back_transaction_leaves_the_step_waiting(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = approval(conn)
    before = footprint(autocommit_conn, run_id)
    with conn.transaction(force_rollback=True):
        assert runledger.complete_external_step(conn, run_id, "approve", output="yes")
        assert state(runledger.get_workflow_run(conn, run_id))[1]["ship"] is S.QUEUED
    conn.commit()
    assert footprint(autocommit_conn, run_id) == before
    run = check(autocommit_conn, run_id)
    assert run.step("approve").status is S.WAITING
    assert run.step("approve").posted_at is None
    assert job_rows(autocommit_conn, run_id, "ship") == 0
    # ... and can still be completed afterwards.
    assert runledger.complete_external_step(conn, run_id, "approve", output="yes")
    conn.commit()
    assert check(autocommit_conn, run_id).step("ship").status is S.QUEUED


def test_a_refused_signal_leaves_the_callers_transaction_usable(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("two")
        .step("one", external=True)
        .step("two", external=True)
        .step("later", external=True, after="one"),
    )
    with conn.transaction():
        with pytest.raises(StepNotWaiting):
            runledger.complete_external_step(conn, run_id, "later")
        assert runledger.complete_external_step(conn, run_id, "one", output=1)
        runledger.enqueue(conn, "side.effect", {"n": 1})
    run = check(autocommit_conn, run_id)
    assert state(run)[1] == {"one": S.SUCCEEDED, "two": S.WAITING, "later": S.WAITING}
    assert runledger.list_jobs(autocommit_conn, job_type="side.effect")[0].payload == {"n": 1}
