"""Finished jobs leave the hot table for runledger.job_history in the transaction that finishes
them, and runledger.jobs still shows every job: keys, ticks, deletes, requeues and the claim's
plans across the two tables (schema version 6)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from test_lock_order import Background, connect_b, wait_for_lock_wait
from test_workflow_engine import QUEUE, WORKER, claim_jobs, finish_job

import runledger
from runledger import JobStatus
from runledger.postgres import attempts, cancellation, schedules
from runledger.postgres.attempts import claim_params
from runledger.runtime.reaper import Reaper

Conn = psycopg.Connection[Any]


def where(conn: Conn, job_id: uuid.UUID) -> str | None:
    """The table that holds the job's row: 'jobs' (hot), 'job_history', or None."""
    row = conn.execute(
        "select tableoid::regclass::text from runledger.jobs where id = %s", (job_id,)
    ).fetchone()
    return None if row is None else str(row[0]).removeprefix("runledger.")


def run_one(conn: Conn, job_type: str, status: JobStatus = JobStatus.SUCCEEDED) -> uuid.UUID:
    """Enqueue a job, claim it and finish it with ``status``, each step committed."""
    job_id = runledger.enqueue(conn, job_type, {"n": 1})
    conn.commit()
    (job,) = claim_jobs(conn, [job_type], limit=1)
    assert job.id == job_id
    finish_job(conn, job, status, output={"done": True})
    return job_id


def test_a_finished_job_moves_to_the_history_table_and_is_still_found_as_a_job(
    conn: Conn,
) -> None:
    succeeded = run_one(conn, "h.ok")
    failed = run_one(conn, "h.bad", JobStatus.FAILED)
    retried = run_one(conn, "h.again", JobStatus.QUEUED)
    cancelled = runledger.enqueue(conn, "h.never", {})
    conn.commit()
    assert runledger.cancel_job(conn, cancelled)
    conn.commit()

    assert where(conn, succeeded) == "job_history"
    assert where(conn, failed) == "job_history"
    assert where(conn, cancelled) == "job_history"
    assert where(conn, retried) == "jobs"  # queued again: still live
    job = runledger.get_job(conn, succeeded)
    assert (job.status, job.output, job.attempt) == (JobStatus.SUCCEEDED, {"done": True}, 1)
    assert [a.outcome for a in runledger.list_attempts(conn, succeeded)] == [
        runledger.AttemptOutcome.SUCCEEDED
    ]
    # Only live rows in the hot table.
    hot = conn.execute("select id from only runledger.jobs").fetchall()
    assert hot == [(retried,)]


def test_the_history_table_has_the_columns_of_jobs_in_the_same_order(conn: Conn) -> None:
    # The moves copy rows with "select *": a column added to jobs reaches job_history in the
    # same place, but one added to job_history alone would break them.
    columns = """
        select array_agg(attname::text order by attnum) from pg_attribute
        where attrelid = %s::regclass and attnum > 0 and not attisdropped
    """
    hot = conn.execute(columns, ("runledger.jobs",)).fetchone()
    history = conn.execute(columns, ("runledger.job_history",)).fetchone()
    assert hot == history


def test_a_key_holds_after_its_job_finished_and_is_free_once_it_is_deleted(conn: Conn) -> None:
    first = runledger.enqueue(conn, "h.keyed", {"n": 1}, idempotency_key="k-1")
    conn.commit()
    (job,) = claim_jobs(conn, ["h.keyed"], limit=1)
    finish_job(conn, job)
    assert where(conn, first) == "job_history"

    again = runledger.enqueue(conn, "h.keyed", {"n": 1}, idempotency_key="k-1")
    conn.commit()
    assert again == first
    with pytest.raises(runledger.errors.IdempotencyConflict) as raised:
        runledger.enqueue(conn, "h.keyed", {"n": 2}, idempotency_key="k-1")
    assert raised.value.existing_id == first
    conn.rollback()

    # Deleting the job by hand frees its key, as the foreign keys' cascade did.
    conn.execute("delete from runledger.jobs where id = %s", (first,))
    conn.commit()
    assert conn.execute(
        "select count(*) from runledger.job_attempts where job_id = %s", (first,)
    ).fetchone() == (0,)
    fresh = runledger.enqueue(conn, "h.keyed", {"n": 2}, idempotency_key="k-1")
    conn.commit()
    assert fresh != first


def test_a_batch_keeps_its_keys_across_both_tables(conn: Conn) -> None:
    done = runledger.enqueue(conn, "h.batch", {"n": 0}, idempotency_key="b-0")
    conn.commit()
    (job,) = claim_jobs(conn, ["h.batch"], limit=1)
    finish_job(conn, job)
    live = runledger.enqueue(conn, "h.batch", {"n": 1}, idempotency_key="b-1")
    conn.commit()

    ids = runledger.enqueue_many(
        conn,
        [
            runledger.Job("h.batch", {"n": 0}, idempotency_key="b-0"),
            runledger.Job("h.batch", {"n": 1}, idempotency_key="b-1"),
            runledger.Job("h.batch", {"n": 2}, idempotency_key="b-2"),
        ],
    )
    conn.commit()
    assert ids[:2] == [done, live]
    assert where(conn, ids[2]) == "jobs"
    keys = conn.execute("select idempotency_key, job_id from runledger.job_keys order by 1")
    assert keys.fetchall() == [("b-0", done), ("b-1", live), ("b-2", ids[2])]


def test_a_requeued_job_comes_back_to_the_hot_table_and_runs(conn: Conn) -> None:
    failed = run_one(conn, "h.retry", JobStatus.FAILED)
    assert where(conn, failed) == "job_history"

    assert runledger.requeue(conn, failed)
    conn.commit()
    assert where(conn, failed) == "jobs"
    (job,) = claim_jobs(conn, ["h.retry"], limit=1)
    assert (job.id, job.attempt) == (failed, 1)
    finish_job(conn, job)
    assert where(conn, failed) == "job_history"
    # Both attempts kept: the move back and forth deleted none.
    assert len(runledger.list_attempts(conn, failed)) == 2


def test_a_cancel_waiting_on_a_job_that_finishes_meanwhile_says_it_had_finished(
    dsn: str, conn: Conn, observer: Conn
) -> None:
    job_id = runledger.enqueue(conn, "h.race", {})
    conn.commit()
    (job,) = claim_jobs(conn, ["h.race"], limit=1)
    # A finishes the job and holds its transaction open: the row is locked, then moved.
    attempts.finish(conn, [attempts.AttemptResult(
        job_id=job.id, lease_token=job.lease_token, status=JobStatus.SUCCEEDED,
        outcome=runledger.AttemptOutcome.SUCCEEDED, output=None,
    )])  # fmt: skip
    with connect_b(dsn) as other:
        b = Background(other, lambda c: runledger.cancel_job(c, job_id))
        assert "runledger.jobs" in wait_for_lock_wait(observer, b)
        conn.commit()
        # The row B waited for is gone from the hot table; B finds the job in the history.
        assert b.result() is False
    assert runledger.get_job(conn, job_id).status is JobStatus.SUCCEEDED


def test_a_tick_that_became_a_job_becomes_no_other_once_that_job_finished(conn: Conn) -> None:
    tick = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    params = {
        "queue": QUEUE, "job_type": "h.tick", "payload": "{}", "priority": 0,
        "max_attempts": None, "timeout_seconds": None, "name": "h.every", "tick": tick,
        "next_run_at": tick + datetime.timedelta(hours=1),
    }  # fmt: skip
    conn.execute(
        "insert into runledger.schedules (name, cron, job_type, next_run_at) "
        "values ('h.every', '0 * * * *', 'h.tick', %s)",
        (tick,),
    )
    first = conn.execute(schedules.FIRE, {**params, "job_id": uuid.uuid4()}).fetchone()
    conn.commit()
    assert first is not None and first[0] is not None
    (job,) = claim_jobs(conn, ["h.tick"], limit=1)
    finish_job(conn, job)
    assert where(conn, first[0]) == "job_history"

    second = conn.execute(schedules.FIRE, {**params, "job_id": uuid.uuid4()}).fetchone()
    conn.commit()
    assert second is not None and second[0] is None
    count = conn.execute("select count(*) from runledger.jobs where schedule_name = 'h.every'")
    assert count.fetchone() == (1,)


def test_finished_rows_left_in_the_hot_table_are_settled_with_their_attempts(
    dsn: str, conn: Conn
) -> None:
    done = run_one(conn, "h.old")
    # As a database upgraded from version 5 has them: finished, yet in the hot table.
    conn.execute("select runledger.reopen_jobs(array[%s]::uuid[])", (done,))
    conn.commit()
    assert where(conn, done) == "jobs"

    with runledger.Store(dsn, max_size=2) as store:
        moved = Reaper(store, runledger.Registry(), interval=1.0, vacuum=False).settle()
    assert moved == 1
    assert where(conn, done) == "job_history"
    assert len(runledger.list_attempts(conn, done)) == 1


HOT_PATH = {
    "claim": (attempts.CLAIM_JOBS, lambda: claim_params(
        worker=WORKER, queues=[QUEUE], job_types=["t"], limit=8, lease_seconds=30.0)),
    "renew": (attempts.RENEW_LEASES, lambda: {
        "ids": [uuid.uuid4()], "tokens": [uuid.uuid4()], "remaining": [None], "progress": [None],
        "lease_seconds": 30.0}),
    "mark": (attempts.MARK_STARTED, lambda: {"ids": [uuid.uuid4()], "tokens": [uuid.uuid4()]}),
    "finish": (attempts.FINISH_ATTEMPTS, lambda: attempts.finish_params([])),
    "expired": (attempts.LOCK_EXPIRED, lambda: {"limit": 100}),
    "orphaned": (attempts.ORPHANED_ATTEMPTS, lambda: {"worker": WORKER, "held": []}),
    "cancel": (cancellation.CANCEL_JOBS, lambda: {"ids": [uuid.uuid4()], "reason": None}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HOT_PATH))
def test_the_hot_path_never_plans_a_read_of_the_history(conn: Conn, name: str) -> None:
    statement, params = HOT_PATH[name]
    plan = conn.execute(f"explain (costs off) {statement}", params()).fetchall()
    text = "\n".join(str(row[0]) for row in plan)
    assert "job_history" not in text, text
    assert "runledger.jobs" in text or " jobs" in text
    conn.rollback()
