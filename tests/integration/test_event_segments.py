"""The segments of runledger.events (runledger.postgres.segments): new events go into the
newest, and a segment that closed longer ago than the keep goes whole, with the events of the
jobs and runs still kept copied out first."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

import runledger
from runledger import JobStatus, WorkflowBuilder
from runledger.postgres.retention import PRUNE_LOCK_KEY, prune_jobs
from runledger.postgres.segments import drop_segment, open_segment, segments
from tests.integration.conftest import Counter

WEEK = datetime.timedelta(days=7)
NOW = datetime.timedelta(0)
Conn = psycopg.Connection[Any]


def where(conn: Conn, job_id: uuid.UUID) -> list[tuple[str, int]]:
    """The partition and segment of each of the job's events, in id order."""
    return [
        (str(row[0]), int(row[1]))
        for row in conn.execute(
            "select tableoid::regclass, segment from runledger.events where job_id = %s "
            "order by id",
            (job_id,),
        ).fetchall()
    ]


def events_of(conn: Conn, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """The job's events as the ledger shows them, segment aside."""
    return conn.execute(
        "select id, occurred_at, kind, job_id, workflow_run_id, step_key, attempt, data, queue "
        "from runledger.events where job_id = %s order by id",
        (job_id,),
    ).fetchall()


def open_now(conn: Conn) -> int:
    with conn.transaction():
        opened = open_segment(conn, older_than=NOW)
    assert opened is not None
    return opened


def close_days_ago(conn: Conn, segment: int, days: int) -> None:
    conn.execute(
        "update runledger.event_segments set closed_at = now() - make_interval(days => %s), "
        "opened_at = now() - make_interval(days => %s + 1) where segment = %s",
        (days, days, segment),
    )


def test_a_new_schema_has_one_open_segment_that_every_event_goes_into(
    autocommit_conn: Conn,
) -> None:
    conn = autocommit_conn
    (only,) = segments(conn)
    assert (only.segment, only.closed_at, only.table) == (0, None, "events_s0")
    job = runledger.enqueue(conn, "seg.x")
    assert where(conn, job) == [("runledger.events_s0", 0)]


def test_opening_a_segment_closes_the_newest_and_sends_new_events_to_the_next(
    autocommit_conn: Conn,
) -> None:
    conn = autocommit_conn
    before = runledger.enqueue(conn, "seg.x")
    with conn.transaction():
        assert open_segment(conn, older_than=datetime.timedelta(hours=1)) is None  # not due
    assert open_now(conn) == 1
    after = runledger.enqueue(conn, "seg.x")
    runledger.cancel_job(conn, before)

    assert where(conn, before) == [("runledger.events_s0", 0), ("runledger.events_s1", 1)]
    assert where(conn, after) == [("runledger.events_s1", 1)]
    first, second = segments(conn)
    assert first.closed_at is not None and first.closed_at >= first.opened_at
    assert second.opened_at >= first.closed_at and second.closed_at is None
    # Each segment has its own primary key and the parent's indexes.
    indexes = {
        row[0]
        for row in conn.execute(
            "select indexname from pg_indexes where tablename = 'events_s1'"
        ).fetchall()
    }
    assert indexes == {"events_s1_pkey", "events_s1_job", "events_s1_run", "events_s1_queue"}
    # Ids still come from the one sequence, in order across segments.
    assert [e[0] for e in events_of(conn, before)] == sorted(e[0] for e in events_of(conn, before))


def test_dropping_a_segment_takes_the_pruned_jobs_events_and_copies_out_the_kept_ones(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    pruned = [runledger.enqueue(conn, "seg.x") for _ in range(10)]
    dead = runledger.enqueue(conn, "seg.x")
    queued = runledger.enqueue(conn, "seg.x")
    for job in (*pruned, dead):
        runledger.cancel_job(conn, job)
    conn.execute("update runledger.jobs set status = 'failed' where id = %s", (dead,))
    run_id = runledger.enqueue_workflow(
        conn, WorkflowBuilder("seg.flow").step("approve", external=True).build()
    )
    runledger.pause_queue(conn, "seg.q")
    conn.execute(
        "update runledger.jobs set finished_at = now() - interval '8 days' where id = any(%s)",
        (pruned,),
    )
    with conn.transaction():
        gone = prune_jobs(conn, JobStatus.CANCELLED, WEEK, events=False)
    assert (gone.jobs, gone.events) == (10, 0)
    assert count("events", "job_id = any(%s)", (pruned,)) == 20  # left to the segment
    kept = {job: events_of(conn, job) for job in (dead, queued)}
    run_events = count("events", "workflow_run_id = %s", (run_id,))
    total = count("events")
    assert open_now(conn) == 1
    with conn.transaction():
        assert drop_segment(conn, WEEK).segment is None  # closed just now: not due

    close_days_ago(conn, 0, days=8)
    with conn.transaction():
        dropped = drop_segment(conn, WEEK)

    # The pruned jobs' events and the queue's event went with the segment; the rest moved.
    assert (dropped.segment, dropped.dropped, dropped.locked) == (0, True, True)
    assert dropped.kept == total - 20 - 1 == 5
    assert dropped.events == 21
    assert conn.execute("select to_regclass('runledger.events_s0')").fetchone() == (None,)
    assert [s.segment for s in segments(conn)] == [1]
    assert count("events", "job_id = any(%s)", (pruned,)) == 0
    assert count("events", "queue = 'seg.q'") == 0
    for job, events in kept.items():
        assert events_of(conn, job) == events  # same ids, times and data
        assert {segment for _table, segment in where(conn, job)} == {1}
    assert count("events", "workflow_run_id = %s", (run_id,)) == run_events
    with conn.transaction():
        assert drop_segment(conn, WEEK).segment is None  # the newest never goes
    assert runledger.enqueue(conn, "seg.x") is not None


def test_a_segment_mostly_of_kept_events_is_cleaned_in_place_and_looked_at_a_keep_later(
    autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    pruned = runledger.enqueue(conn, "seg.x")
    runledger.cancel_job(conn, pruned)
    backlog = [runledger.enqueue(conn, "seg.x") for _ in range(3)]  # queued for over a keep
    conn.execute(
        "update runledger.jobs set finished_at = now() - interval '8 days' where id = %s",
        (pruned,),
    )
    with conn.transaction():
        prune_jobs(conn, JobStatus.CANCELLED, WEEK, events=False)
    open_now(conn)
    close_days_ago(conn, 0, days=8)
    kept = [events_of(conn, job) for job in backlog]

    with conn.transaction():
        cleaned = drop_segment(conn, WEEK)

    # Copying 3 events out would cost more than deleting the 2 others where they are.
    assert (cleaned.segment, cleaned.dropped, cleaned.events, cleaned.kept) == (0, False, 2, 3)
    assert count("events", "job_id = %s", (pruned,)) == 0
    assert [events_of(conn, job) for job in backlog] == kept
    assert {segment for job in backlog for _table, segment in where(conn, job)} == {0}
    first, _newest = segments(conn)
    assert first.closed_at is not None
    assert first.closed_at > first.opened_at + datetime.timedelta(days=1)  # closed again now
    with conn.transaction():
        assert drop_segment(conn, WEEK).segment is None  # a keep later, not before
    # Once the backlog has run and been pruned, the segment goes.
    for job in backlog:
        runledger.cancel_job(conn, job)
    conn.execute(
        "update runledger.jobs set finished_at = now() - interval '8 days' where id = any(%s)",
        (backlog,),
    )
    with conn.transaction():
        prune_jobs(conn, JobStatus.CANCELLED, WEEK, events=False)
    close_days_ago(conn, 0, days=8)
    with conn.transaction():
        dropped = drop_segment(conn, WEEK)
    assert (dropped.segment, dropped.dropped, dropped.events, dropped.kept) == (0, True, 3, 0)
    assert count("events", "job_id = any(%s)", (backlog,)) == 3  # their cancellations, in 1


def test_a_segment_waits_while_due_jobs_that_finished_before_it_closed_are_not_yet_pruned(
    autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    due = [runledger.enqueue(conn, "seg.x") for _ in range(3)]
    dead = runledger.enqueue(conn, "seg.x")
    for job in (*due, dead):
        runledger.cancel_job(conn, job)
    conn.execute("update runledger.jobs set status = 'failed' where id = %s", (dead,))
    conn.execute("update runledger.jobs set finished_at = now() - interval '9 days'")
    open_now(conn)
    close_days_ago(conn, 0, days=8)
    keeps = {
        JobStatus.SUCCEEDED: WEEK,
        JobStatus.FAILED: 4 * WEEK,  # the dead letter is not due: it holds nothing up
        JobStatus.CANCELLED: WEEK,
    }

    with conn.transaction():
        waiting = drop_segment(conn, WEEK, keeps=keeps)

    assert (waiting.segment, waiting.waiting, waiting.dropped, waiting.events) == (
        0, True, False, 0
    )  # fmt: skip
    assert count("events", "segment = 0") == 8  # untouched
    with conn.transaction():
        prune_jobs(conn, JobStatus.CANCELLED, WEEK, events=False)
    with conn.transaction():
        dropped = drop_segment(conn, WEEK, keeps=keeps)
    assert (dropped.segment, dropped.waiting, dropped.dropped) == (0, False, True)
    assert (dropped.events, dropped.kept) == (6, 2)  # the dead letter's events copied out


def test_a_segment_change_waits_a_moment_for_writers_then_gives_up_leaving_them_be(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    open_now(conn)
    close_days_ago(conn, 0, days=8)
    with psycopg.connect(dsn) as writer:
        job = runledger.enqueue(writer, "seg.x")  # its transaction holds the events table
        for change in (
            lambda c: open_segment(c, older_than=NOW),
            lambda c: drop_segment(c, WEEK),
        ):
            began = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable), conn.transaction():
                change(conn)
            assert time.monotonic() - began < 5
        writer.commit()
    assert count("jobs", "id = %s", (job,)) == 1
    assert [(s.segment, s.closed_at is None) for s in segments(conn)] == [(0, False), (1, True)]
    assert conn.execute("select to_regclass('runledger.events_s0')").fetchone() is not None


def test_a_segment_change_is_skipped_while_another_pruner_holds_the_lock(
    dsn: str, autocommit_conn: Conn
) -> None:
    conn = autocommit_conn
    open_now(conn)
    close_days_ago(conn, 0, days=8)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(dsn) as other, other.transaction():
            other.execute("select pg_advisory_xact_lock(%s)", (PRUNE_LOCK_KEY,))
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        with conn.transaction():
            assert open_segment(conn, older_than=NOW) is None
            assert drop_segment(conn, WEEK).locked is False
    finally:
        release.set()
        holder.join()
    assert [s.segment for s in segments(conn)] == [0, 1]
    with conn.transaction():
        assert drop_segment(conn, WEEK).segment == 0
