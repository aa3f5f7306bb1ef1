"""Segments of the events opened and dropped while a runtime enqueues, claims and finishes
jobs: no job waits long or fails for it, and no event is lost or written twice."""

from __future__ import annotations

import datetime
import time
from typing import Any

import psycopg

import runledger
from runledger import JobStatus
from runledger.postgres.segments import drop_segment, open_segment, segments

WEEK = datetime.timedelta(days=7)
CHANGES = 8
"""Segments opened, and as many dropped, while the jobs flow."""


def test_segments_change_under_a_running_queue_and_every_event_is_kept_once(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    conn = autocommit_conn
    registry = runledger.Registry()

    @registry.handler("seg.noop")
    def noop(ctx: runledger.JobContext, payload: Any) -> None:
        """Nothing."""

    jobs: list[Any] = []
    opened = dropped = gave_up = 0
    with (
        runledger.Runtime(
            dsn, registry, concurrency=8, poll_interval=0.01, listen=False, retention=None
        ),
        psycopg.connect(dsn, autocommit=True) as pruner,
    ):
        deadline = time.monotonic() + 120
        while dropped < CHANGES:
            assert time.monotonic() < deadline, f"{opened} opened, {dropped} dropped, {gave_up}"
            jobs += runledger.enqueue_many(conn, [runledger.Job("seg.noop") for _ in range(50)])
            try:
                with pruner.transaction():
                    opened += open_segment(pruner, older_than=datetime.timedelta(0)) is not None
                # Every closed segment is due: each drop copies out every event written so
                # far (no job is pruned), while the runtime writes new ones.
                pruner.execute(
                    "update runledger.event_segments set closed_at = now() - interval '8 days', "
                    "opened_at = least(opened_at, now() - interval '9 days') "
                    "where closed_at is not null"
                )
                with pruner.transaction():
                    dropped += drop_segment(pruner, WEEK).segment is not None
            except psycopg.errors.LockNotAvailable:
                gave_up += 1  # writers held the table for 100 ms: tried again next time
        while conn.execute(
            "select count(*) from runledger.jobs where status <> 'succeeded'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the jobs never finished"
            conn.execute("select pg_sleep(0.02)")

    assert opened >= CHANGES
    assert len(segments(conn)) <= 2  # the newest, and one closed since the last drop
    # Every job has its three events once, with unique ids, whichever segment holds them.
    per_job = conn.execute(
        "select job_id, array_agg(kind order by id), count(distinct id) = count(*) "
        "from runledger.events where job_id = any(%s) group by job_id",
        (jobs,),
    ).fetchall()
    assert len(per_job) == len(jobs)
    for _job, kinds, unique in per_job:
        assert kinds == ["job.enqueued", "job.started", "job.succeeded"]
        assert unique
    statuses = conn.execute(
        "select count(*) from runledger.jobs where id = any(%s) and status = %s",
        (jobs, str(JobStatus.SUCCEEDED)),
    ).fetchone()
    assert statuses == (len(jobs),)
