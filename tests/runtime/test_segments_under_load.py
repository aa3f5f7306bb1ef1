"""Segments of the events opened and dropped while a runtime enqueues, claims and finishes
jobs, and finished jobs are pruned: every job finishes, and no event of a job still in the
ledger is lost or written twice."""

from __future__ import annotations

import datetime
import time
from typing import Any

import psycopg

import runledger
from runledger import JobStatus
from runledger.postgres.retention import prune_jobs
from runledger.postgres.segments import drop_segment, open_segment, segments

WEEK = datetime.timedelta(days=7)
NOW = datetime.timedelta(0)
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
    opened = dropped = copied = gave_up = 0
    with (
        runledger.Runtime(
            dsn, registry, concurrency=8, poll_interval=0.01, listen=False, retention=None
        ),
        psycopg.connect(dsn, autocommit=True) as pruner,
    ):
        deadline = time.monotonic() + 120
        while dropped < CHANGES or not copied:
            assert time.monotonic() < deadline, f"{opened} opened, {dropped} dropped, {gave_up}"
            jobs += runledger.enqueue_many(conn, [runledger.Job("seg.noop") for _ in range(50)])
            try:
                # As the pruner does: the finished jobs go, their events stay for the drop.
                with pruner.transaction():
                    prune_jobs(pruner, JobStatus.SUCCEEDED, NOW, limit=10_000, events=False)
                with pruner.transaction():
                    opened += open_segment(pruner, older_than=NOW) is not None
                # Every closed segment is due; the events of jobs queued or running at that
                # moment are copied out while the runtime writes theirs and others'.
                pruner.execute(
                    "update runledger.event_segments set closed_at = now() - interval '8 days', "
                    "opened_at = least(opened_at, now() - interval '9 days') "
                    "where closed_at is not null"
                )
                with pruner.transaction():
                    result = drop_segment(pruner, WEEK)
                if result.segment is not None and result.dropped:
                    dropped += 1
                    copied += result.kept
            except psycopg.errors.LockNotAvailable:
                gave_up += 1  # writers held the table for 100 ms: tried again next time
        while conn.execute(
            "select count(*) from runledger.jobs where status <> 'succeeded'"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the jobs never finished"
            conn.execute("select pg_sleep(0.02)")

    left = [
        row[0]
        for row in conn.execute(
            "select id from runledger.jobs where id = any(%s)", (jobs,)
        ).fetchall()
    ]
    assert left and copied
    assert opened >= CHANGES
    assert segments(conn)[-1].closed_at is None
    # Every job not pruned has its three events once, with unique ids, whichever segment
    # holds them, though most were copied out of a segment while the queue ran.
    per_job = conn.execute(
        "select job_id, array_agg(kind order by id), count(distinct id) = count(*) "
        "from runledger.events where job_id = any(%s) group by job_id",
        (left,),
    ).fetchall()
    assert len(per_job) == len(left)
    for _job, kinds, unique in per_job:
        assert kinds == ["job.enqueued", "job.started", "job.succeeded"]
        assert unique
    statuses = conn.execute(
        "select count(*) from runledger.jobs where id = any(%s) and status = %s",
        (left, str(JobStatus.SUCCEEDED)),
    ).fetchone()
    assert statuses == (len(left),)
