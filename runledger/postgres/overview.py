"""Operator reads: queue status and settings, recent jobs and runs, step progress (for the CLI
and admin).

Plain SELECTs on the caller's connection, like ``runledger.postgres.reads``; none locks.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import attrs
from psycopg.rows import class_row, dict_row

from runledger.postgres.connection import Conn, reading
from runledger.postgres.queues import QueueSettings
from runledger.postgres.reads import JOB_COLUMNS
from runledger.postgres.records import JobRecord

SERVER_NOW = "select now()"

# Queued and running jobs per queue and status, plus the jobs that failed in the last hour.
STATUS_QUERY = """
select queue, status, count(*) as jobs,
       extract(epoch from max(now() - run_at) filter (where status = 'queued'
                                                    and run_at <= now()))::float8
           as oldest_due_seconds,
       array_agg(distinct job_type) as job_types
from runledger.jobs
where status in ('queued', 'running')
   or (status = 'failed' and finished_at > now() - interval '1 hour')
group by queue, status
order by queue, status
"""

# Every queue with settings or with queued or running jobs: its settings (the defaults when it
# has no row) beside its running, queued and due jobs. The counts use the partial indexes of
# running and queued jobs; a queue of millions of queued jobs makes this read take a while.
QUEUE_OVERVIEW = """
with counts as (
    select queue,
           count(*) filter (where status = 'running') as running,
           count(*) filter (where status = 'queued') as queued,
           count(*) filter (where status = 'queued' and run_at <= now()) as due
    from runledger.jobs
    where status in ('queued', 'running')
    group by queue
)
select coalesce(q.queue, c.queue) as queue,
       coalesce(q.paused, false) as paused, q.paused_at, q.paused_by,
       q.concurrency, q.rate, q.per_seconds as per, q.updated_at,
       coalesce(c.running, 0) as running, coalesce(c.queued, 0) as queued,
       coalesce(c.due, 0) as due
from runledger.queues as q
full join counts as c on c.queue = q.queue
order by 1
"""

# list_jobs, newest first: ids are UUIDv7, so "order by id desc" is creation order and walks
# the primary key backwards instead of sorting the table.
LIST_RECENT_JOBS = f"""
select {JOB_COLUMNS}
from runledger.jobs
where (%(status)s::text is null or status = %(status)s)
  and (%(queue)s::text is null or queue = %(queue)s)
  and (%(job_type)s::text is null or job_type = %(job_type)s)
  and (%(run_id)s::uuid is null or workflow_run_id = %(run_id)s)
order by id desc
limit %(limit)s
"""

# Workflow runs, newest first (ids are UUIDv7 too).
LIST_RUNS = """
select id, name, idempotency_key, status, steps_total, steps_open, steps_active,
       steps_unsuccessful, cancel_reason, created_at, updated_at, finished_at
from runledger.workflow_runs
where (%(status)s::text is null or status = %(status)s)
  and (%(name)s::text is null or name = %(name)s)
order by id desc
limit %(limit)s
"""

# What each step's job has done: a job step started with its first attempt; an external
# step with its ``step.waiting`` event.
STEP_PROGRESS = """
select s.step_key, j.status as job_status, j.attempt, j.max_attempts,
       coalesce(a.first_started_at, w.waiting_since) as started_at
from runledger.workflow_step_runs as s
left join runledger.jobs as j on j.id = s.job_id
left join lateral (
    select min(t.started_at) as first_started_at
    from runledger.job_attempts as t
    where t.job_id = s.job_id
) as a on true
left join lateral (
    select min(e.occurred_at) as waiting_since
    from runledger.events as e
    where e.workflow_run_id = s.workflow_run_id
      and e.step_key = s.step_key
      and e.kind = 'step.waiting'
) as w on s.kind = 'external'
where s.workflow_run_id = %(id)s
"""


def server_now(conn: Conn) -> datetime.datetime:
    """The server's ``now()`` (inside a transaction: its start, the snapshot's instant)."""
    with reading(conn):
        row = conn.execute(SERVER_NOW).fetchone()
    assert row is not None
    moment: datetime.datetime = row[0]
    return moment


def queue_status(conn: Conn) -> list[tuple[Any, ...]]:
    """(queue, status, jobs, oldest due seconds, job types) rows for queued, running and
    recently failed jobs."""
    with reading(conn):
        return conn.execute(STATUS_QUERY).fetchall()


@attrs.frozen(kw_only=True)
class QueueState:
    """A queue's settings and how many of its jobs run and wait, read in one statement.

    Attributes:
        settings: its flow-control settings (the defaults when it has none).
        running: its jobs running now (claimed, lease held).
        queued: its queued jobs, due or not.
        due: those of its queued jobs whose ``run_at`` has come.
    """

    settings: QueueSettings
    running: int
    queued: int
    due: int


def queue_overview(conn: Conn) -> list[QueueState]:
    """Every queue that has settings or queued or running jobs, by name. Reads only; one
    statement, so the counts and settings agree."""
    with reading(conn), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(QUEUE_OVERVIEW).fetchall()
    return [
        QueueState(
            settings=QueueSettings(
                queue=row["queue"],
                paused=row["paused"],
                paused_at=row["paused_at"],
                paused_by=row["paused_by"],
                concurrency=row["concurrency"],
                rate=row["rate"],
                per=row["per"],
                updated_at=row["updated_at"],
            ),
            running=row["running"],
            queued=row["queued"],
            due=row["due"],
        )
        for row in rows
    ]


def recent_jobs(
    conn: Conn,
    *,
    status: str | None = None,
    queue: str | None = None,
    job_type: str | None = None,
    run_id: uuid.UUID | None = None,
    limit: int = 50,
) -> list[JobRecord]:
    """Jobs matching every filter given, newest first."""
    params = {
        "status": status,
        "queue": queue,
        "job_type": job_type,
        "run_id": run_id,
        "limit": limit,
    }
    with reading(conn), conn.cursor(row_factory=class_row(JobRecord)) as cur:
        return cur.execute(LIST_RECENT_JOBS, params).fetchall()


def list_workflow_runs(
    conn: Conn, *, status: str | None = None, name: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Workflow runs matching the filters, newest first, as column dicts."""
    params = {"status": status, "name": name, "limit": limit}
    with reading(conn), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(LIST_RUNS, params).fetchall()


def step_progress(conn: Conn, run_id: uuid.UUID) -> list[dict[str, Any]]:
    """Per step of a run: step_key, job_status, attempt, max_attempts, started_at."""
    with reading(conn), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(STEP_PROGRESS, {"id": run_id}).fetchall()
