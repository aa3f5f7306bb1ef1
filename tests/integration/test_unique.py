"""Unique windows of idempotency keys (schema version 7): a key returns its job while the job is
queued or running (``Unique.active()``) or for a period from its enqueue
(``Unique.within(...)``); after that a new job takes the key over. Conflicts within the window
raise before anything is written; concurrent enqueues of one key make one job."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from test_lock_order import Background, connect_b, wait_for_lock_wait
from test_workflow_engine import claim_jobs, finish_job

import runledger
from runledger import JobStatus, Unique
from runledger.errors import IdempotencyConflict, JobNotRequeueable
from runledger.postgres.enqueue import TAKE_OVER_KEYS

Conn = psycopg.Connection[Any]
ACTIVE = Unique.active()
HOUR = Unique.within(datetime.timedelta(hours=1))


def holder(conn: Conn, job_type: str, key: str) -> uuid.UUID:
    row = conn.execute(
        "select job_id from runledger.job_keys where job_type = %s and idempotency_key = %s",
        (job_type, key),
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def jobs_with_key(conn: Conn, key: str) -> list[tuple[uuid.UUID, str]]:
    rows = conn.execute(
        "select id, status from runledger.jobs where idempotency_key = %s order by id", (key,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def finish(conn: Conn, job_type: str, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    (job,) = claim_jobs(conn, [job_type], limit=1)
    finish_job(conn, job, status)


def age(conn: Conn, job_id: uuid.UUID, by: str) -> None:
    """Move a job's enqueue time into the past, as if it were enqueued ``by`` ago."""
    conn.execute(
        "update runledger.jobs set created_at = created_at - %s::interval where id = %s",
        (by, job_id),
    )
    conn.commit()


# --- while active ---------------------------------------------------------------------------


def test_unique_while_active_returns_the_live_job_and_queues_a_new_one_once_it_finished(
    conn: Conn,
) -> None:
    first = runledger.enqueue(conn, "u.sync", {"t": 1}, idempotency_key="sync", unique=ACTIVE)
    conn.commit()
    assert runledger.enqueue(conn, "u.sync", {"t": 1}, idempotency_key="sync", unique=ACTIVE) == (
        first
    )
    (job,) = claim_jobs(conn, ["u.sync"], limit=1)
    # Running is active too.
    assert runledger.enqueue(conn, "u.sync", {"t": 1}, idempotency_key="sync", unique=ACTIVE) == (
        first
    )
    conn.commit()
    finish_job(conn, job, JobStatus.SUCCEEDED)

    second = runledger.enqueue(conn, "u.sync", {"t": 1}, idempotency_key="sync", unique=ACTIVE)
    conn.commit()
    assert second != first
    assert holder(conn, "u.sync", "sync") == second
    assert jobs_with_key(conn, "sync") == [(first, "succeeded"), (second, "queued")]

    # A failed or cancelled holder lets a new job in as well.
    assert runledger.cancel_job(conn, second)
    conn.commit()
    third = runledger.enqueue(conn, "u.sync", {"t": 1}, idempotency_key="sync", unique=ACTIVE)
    conn.commit()
    assert third not in (first, second)
    finish(conn, "u.sync", JobStatus.FAILED)
    fourth = runledger.enqueue(conn, "u.sync", {"t": 1}, idempotency_key="sync", unique=ACTIVE)
    conn.commit()
    assert len({first, second, third, fourth}) == 4
    events = runledger.list_events(conn, job_id=fourth)
    assert [str(e.kind) for e in events] == ["job.enqueued"]


def test_a_different_request_conflicts_while_the_job_is_active_and_not_after(
    conn: Conn, count: Any
) -> None:
    first = runledger.enqueue(conn, "u.c", {"n": 1}, idempotency_key="c", unique=ACTIVE)
    conn.commit()
    with conn.transaction():
        other = runledger.enqueue(conn, "u.other", {})
        with pytest.raises(IdempotencyConflict) as raised:
            runledger.enqueue(conn, "u.c", {"n": 2}, idempotency_key="c", unique=ACTIVE)
        # Nothing was written and the caller's transaction goes on.
        assert runledger.get_job(conn, other).status is JobStatus.QUEUED
    assert raised.value.existing_id == first
    # The window is part of the request: the same key asked "forever" is another request.
    with pytest.raises(IdempotencyConflict):
        runledger.enqueue(conn, "u.c", {"n": 1}, idempotency_key="c")
    conn.rollback()
    assert count("jobs") == 2

    finish(conn, "u.c")
    second = runledger.enqueue(conn, "u.c", {"n": 2}, idempotency_key="c", unique=ACTIVE)
    conn.commit()
    assert second != first
    assert holder(conn, "u.c", "c") == second


def test_a_key_held_forever_passes_to_an_active_request_once_its_job_finished(
    conn: Conn,
) -> None:
    # The window is the one the new enqueue asks for, judged against the holder.
    first = runledger.enqueue(conn, "u.f", {}, idempotency_key="f")
    conn.commit()
    finish(conn, "u.f")
    assert runledger.enqueue(conn, "u.f", {}, idempotency_key="f") == first
    second = runledger.enqueue(conn, "u.f", {}, idempotency_key="f", unique=ACTIVE)
    conn.commit()
    assert second != first
    # ... and the new holder, still queued, is the same "forever" request no more.
    with pytest.raises(IdempotencyConflict) as raised:
        runledger.enqueue(conn, "u.f", {}, idempotency_key="f")
    assert raised.value.existing_id == second


def test_a_finished_holder_left_in_the_hot_table_does_not_block_the_new_job(
    conn: Conn,
) -> None:
    # As a database upgraded from version 5 has it until the reaper settles it: a finished
    # keyed row in runledger.jobs itself. The hot table's unique index on keys is gone (0007).
    first = runledger.enqueue(conn, "u.old", {}, idempotency_key="old", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.old")
    conn.execute("select runledger.reopen_jobs(array[%s]::uuid[])", (first,))
    conn.commit()
    assert conn.execute(
        "select status from only runledger.jobs where id = %s", (first,)
    ).fetchone() == ("succeeded",)

    second = runledger.enqueue(conn, "u.old", {}, idempotency_key="old", unique=ACTIVE)
    conn.commit()
    assert second != first
    assert jobs_with_key(conn, "old") == [(first, "succeeded"), (second, "queued")]
    assert conn.execute("select to_regclass('runledger.jobs_idempotency_key')").fetchone() == (
        None,
    )


# --- within a period --------------------------------------------------------------------------


def test_unique_within_a_period_returns_the_first_job_until_the_period_has_gone(
    conn: Conn,
) -> None:
    first = runledger.enqueue(conn, "u.p", {"n": 1}, idempotency_key="p", unique=HOUR)
    conn.commit()
    finish(conn, "u.p")
    # Finished, yet within the hour: still the same job, and another request conflicts.
    assert runledger.enqueue(conn, "u.p", {"n": 1}, idempotency_key="p", unique=HOUR) == first
    with pytest.raises(IdempotencyConflict):
        runledger.enqueue(conn, "u.p", {"n": 2}, idempotency_key="p", unique=HOUR)
    conn.rollback()

    age(conn, first, "59 minutes")
    assert runledger.enqueue(conn, "u.p", {"n": 1}, idempotency_key="p", unique=HOUR) == first
    age(conn, first, "1 minute")
    second = runledger.enqueue(conn, "u.p", {"n": 2}, idempotency_key="p", unique=HOUR)
    conn.commit()
    assert second != first
    assert holder(conn, "u.p", "p") == second
    # A live holder past its period passes the key on as well: the window is time only.
    age(conn, second, "2 hours")
    third = runledger.enqueue(conn, "u.p", {"n": 3}, idempotency_key="p", unique=HOUR)
    conn.commit()
    assert third not in (first, second)
    assert jobs_with_key(conn, "p") == [
        (first, "succeeded"), (second, "queued"), (third, "queued"),
    ]  # fmt: skip


# --- batches ------------------------------------------------------------------------------------


def test_a_batch_taking_one_key_over_twice_makes_one_new_job(conn: Conn) -> None:
    first = runledger.enqueue(conn, "u.b", {}, idempotency_key="b", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.b")
    ids = runledger.enqueue_many(
        conn,
        [
            runledger.Job("u.b", {}, idempotency_key="b", unique=ACTIVE),
            runledger.Job("u.fresh", {}, idempotency_key="b", unique=ACTIVE),
            runledger.Job("u.b", {}, idempotency_key="b", unique=ACTIVE),
        ],
    )
    conn.commit()
    assert ids[0] == ids[2] != first
    assert ids[1] not in (first, ids[0])
    assert jobs_with_key(conn, "b") == sorted(
        [(first, "succeeded"), (ids[0], "queued"), (ids[1], "queued")]
    )


def test_a_conflict_in_a_batch_undoes_the_keys_it_took_over(conn: Conn, count: Any) -> None:
    first = runledger.enqueue(conn, "u.x", {}, idempotency_key="x", unique=ACTIVE)
    live = runledger.enqueue(conn, "u.y", {"n": 1}, idempotency_key="y", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.x")
    with conn.transaction():
        with pytest.raises(IdempotencyConflict) as raised:
            runledger.enqueue_many(
                conn,
                [
                    runledger.Job("u.x", {}, idempotency_key="x", unique=ACTIVE),
                    runledger.Job("u.y", {"n": 2}, idempotency_key="y", unique=ACTIVE),
                ],
            )
        assert raised.value.existing_id == live
        assert holder(conn, "u.x", "x") == first
    assert count("jobs") == 2


# --- concurrency --------------------------------------------------------------------------------


def test_two_transactions_enqueueing_a_new_key_at_once_make_one_job(
    dsn: str, conn: Conn, observer: Conn, count: Any
) -> None:
    first = runledger.enqueue(conn, "u.race", {}, idempotency_key="r", unique=ACTIVE)
    with connect_b(dsn) as other:
        b = Background(
            other,
            lambda c: runledger.enqueue(c, "u.race", {}, idempotency_key="r", unique=ACTIVE),
        )
        # B waits on A's uncommitted key row (the primary key of job_keys).
        assert "job_keys" in wait_for_lock_wait(observer, b)
        assert observer.execute(
            "select count(*) from pg_locks where pid = %s and not granted", (b.pid,)
        ).fetchone() == (1,)
        conn.commit()
        assert b.result() == first
    assert count("jobs") == 1


def test_two_transactions_taking_over_a_finished_key_at_once_make_one_new_job(
    dsn: str, conn: Conn, observer: Conn, count: Any
) -> None:
    old = runledger.enqueue(conn, "u.take", {}, idempotency_key="t", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.take")
    new = runledger.enqueue(conn, "u.take", {}, idempotency_key="t", unique=ACTIVE)
    assert new != old
    with connect_b(dsn) as other:
        b = Background(
            other,
            lambda c: runledger.enqueue(c, "u.take", {}, idempotency_key="t", unique=ACTIVE),
        )
        assert "job_keys" in wait_for_lock_wait(observer, b)
        conn.commit()
        assert b.result() == new
    assert count("jobs") == 2
    assert holder(observer, "u.take", "t") == new


def test_a_different_request_waiting_for_a_take_over_conflicts_with_the_new_job(
    dsn: str, conn: Conn, observer: Conn, count: Any
) -> None:
    runledger.enqueue(conn, "u.lost", {"n": 1}, idempotency_key="l", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.lost")
    new = runledger.enqueue(conn, "u.lost", {"n": 1}, idempotency_key="l", unique=ACTIVE)
    with connect_b(dsn) as other:
        b = Background(
            other,
            lambda c: runledger.enqueue(c, "u.lost", {"n": 2}, idempotency_key="l", unique=ACTIVE),
        )
        wait_for_lock_wait(observer, b)
        conn.commit()
        with pytest.raises(IdempotencyConflict) as raised:
            b.result()
    assert raised.value.existing_id == new
    assert count("jobs") == 2


def test_a_take_over_rolled_back_lets_the_waiting_enqueue_take_the_key(
    dsn: str, conn: Conn, observer: Conn, count: Any
) -> None:
    old = runledger.enqueue(conn, "u.rb", {}, idempotency_key="rb", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.rb")
    runledger.enqueue(conn, "u.rb", {}, idempotency_key="rb", unique=ACTIVE)
    with connect_b(dsn) as other:
        b = Background(
            other,
            lambda c: runledger.enqueue(c, "u.rb", {}, idempotency_key="rb", unique=ACTIVE),
        )
        wait_for_lock_wait(observer, b)
        conn.rollback()
        new = b.result()
    assert new != old
    assert holder(observer, "u.rb", "rb") == new
    assert count("jobs") == 2


# --- requeue of a job whose key passed on -------------------------------------------------------


def failed_then_taken_over(conn: Conn, job_type: str, key: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A keyed job that failed, and the job a later active enqueue queued with its key."""
    old = runledger.enqueue(conn, job_type, {}, idempotency_key=key, unique=ACTIVE)
    conn.commit()
    finish(conn, job_type, JobStatus.FAILED)
    new = runledger.enqueue(conn, job_type, {}, idempotency_key=key, unique=ACTIVE)
    conn.commit()
    assert new != old and holder(conn, job_type, key) == new
    return old, new


def test_requeue_is_refused_while_the_job_that_took_its_key_over_is_live(
    conn: Conn, count: Any
) -> None:
    old, new = failed_then_taken_over(conn, "u.rq", "rq")

    with pytest.raises(JobNotRequeueable) as raised:
        runledger.requeue(conn, old)

    assert raised.value.key_holder == new
    assert str(new) in raised.value.reason
    conn.commit()  # the caller's transaction is still usable
    assert jobs_with_key(conn, "rq") == [(old, "failed"), (new, "queued")]
    assert count("events", "kind = 'job.requeued'") == 0


def test_requeue_takes_the_key_back_from_a_finished_job_that_took_it_over(
    conn: Conn, count: Any
) -> None:
    old, _ = failed_then_taken_over(conn, "u.back", "back")
    finish(conn, "u.back")

    assert runledger.requeue(conn, old) is True
    conn.commit()

    assert holder(conn, "u.back", "back") == old
    # The key's active window now covers the requeued job: no third job.
    assert runledger.enqueue(conn, "u.back", {}, idempotency_key="back", unique=ACTIVE) == old
    conn.commit()
    assert count("jobs", "idempotency_key = 'back'") == 2


def test_requeue_holds_its_key_again_once_the_job_that_took_it_over_was_deleted(
    conn: Conn,
) -> None:
    old, new = failed_then_taken_over(conn, "u.gone", "gone")
    finish(conn, "u.gone")
    conn.execute("delete from runledger.jobs where id = %s", (new,))
    conn.commit()

    assert runledger.requeue(conn, old) is True
    conn.commit()

    assert holder(conn, "u.gone", "gone") == old
    assert runledger.enqueue(conn, "u.gone", {}, idempotency_key="gone", unique=ACTIVE) == old


def test_a_take_over_waiting_for_a_requeue_of_the_holder_returns_the_requeued_job(
    dsn: str, conn: Conn, observer: Conn
) -> None:
    old = runledger.enqueue(conn, "u.wait", {}, idempotency_key="w", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.wait", JobStatus.FAILED)
    assert runledger.requeue(conn, old) is True  # uncommitted: holds the key row
    with connect_b(dsn) as other:
        b = Background(
            other,
            lambda c: runledger.enqueue(c, "u.wait", {}, idempotency_key="w", unique=ACTIVE),
        )
        # B read the holder as failed and waits to take its key over.
        assert "job_keys" in wait_for_lock_wait(observer, b)
        conn.commit()
        assert b.result() == old
    assert jobs_with_key(observer, "w") == [(old, "queued")]


def test_a_requeue_waiting_for_a_take_over_of_its_key_is_refused(
    dsn: str, conn: Conn, observer: Conn
) -> None:
    old = runledger.enqueue(conn, "u.late", {}, idempotency_key="late", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.late", JobStatus.FAILED)
    new = runledger.enqueue(conn, "u.late", {}, idempotency_key="late", unique=ACTIVE)
    with connect_b(dsn) as other:
        b = Background(other, lambda c: runledger.requeue(c, old))
        assert "job_keys" in wait_for_lock_wait(observer, b)
        conn.commit()
        with pytest.raises(JobNotRequeueable) as raised:
            b.result()
    assert raised.value.key_holder == new
    assert jobs_with_key(observer, "late") == [(old, "failed"), (new, "queued")]


def test_the_take_over_leaves_a_key_whose_holder_is_live_again_to_an_active_enqueue(
    conn: Conn,
) -> None:
    # An enqueue that read the holder as finished, then saw a requeue commit before its
    # take-over statement began, must not take the key: the statement itself checks.
    old = runledger.enqueue(conn, "u.stale", {}, idempotency_key="s", unique=ACTIVE)
    conn.commit()
    finish(conn, "u.stale", JobStatus.FAILED)
    assert runledger.requeue(conn, old) is True
    conn.commit()

    taken = conn.execute(
        TAKE_OVER_KEYS,
        {"job_types": ["u.stale"], "keys": ["s"], "holders": [old], "ids": [uuid.uuid4()],
         "if_finished": [True]},
    ).fetchall()  # fmt: skip
    assert taken == []
    assert holder(conn, "u.stale", "s") == old
