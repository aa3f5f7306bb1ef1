"""Reads of the ledger for users and the runtime, on the caller's connection.

Each read is one or a few plain SELECTs; none takes a lock or writes. On a connection that is
not in autocommit mode a read starts a transaction like any statement does.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs
from psycopg.rows import class_row

from runledger.core.job import check_text
from runledger.core.status import JobStatus
from runledger.errors import JobNotFound, WorkflowRunNotFound
from runledger.postgres.connection import Conn, reading
from runledger.postgres.ids import parse_id
from runledger.postgres.records import (
    AttemptRecord,
    EdgeRecord,
    EventRecord,
    JobRecord,
    StepRecord,
    WorkflowRunRecord,
)

JOB_COLUMNS = """
    id, queue, job_type, payload, status, priority, attempt, max_attempts, timeout_seconds,
    run_at, lease_token, lease_owner, lease_expires_at, started_at, idempotency_key,
    workflow_run_id, step_key, output, last_error, cancel_reason, created_at, updated_at,
    finished_at, progress, concurrency_key, concurrency_limit
"""
GET_JOB = f"select {JOB_COLUMNS} from runledger.jobs where id = %(id)s"
LIST_JOBS = f"""
select {JOB_COLUMNS}
from runledger.jobs
where (%(status)s::text is null or status = %(status)s)
  and (%(queue)s::text is null or queue = %(queue)s)
  and (%(job_type)s::text is null or job_type = %(job_type)s)
  and (%(run_id)s::uuid is null or workflow_run_id = %(run_id)s)
order by created_at, id
limit %(limit)s
"""
LIST_ATTEMPTS = """
select job_id, attempt, worker, lease_token, started_at, finished_at, outcome, error_type,
       error_message, error_traceback, retry_at, retry_reason
from runledger.job_attempts
where job_id = %(job_id)s
order by id
"""
GET_RUN = """
select id, name, idempotency_key, input, status, result_step, result, steps_total, steps_open,
       steps_active, steps_unsuccessful, cancel_reason, created_at, updated_at, finished_at
from runledger.workflow_runs
where id = %(id)s
"""
LIST_STEPS = """
select id, step_key, kind, job_type, queue, priority, max_attempts, timeout_seconds, payload,
       status, deps_total, deps_pending, job_id, output, error, posted_at, created_at,
       updated_at, finished_at
from runledger.workflow_step_runs
where workflow_run_id = %(id)s
order by id
"""
LIST_EDGES = """
select step_key, prerequisite_key, release_mode
from runledger.workflow_step_deps
where workflow_run_id = %(id)s
order by step_id, prerequisite_id
"""
LIST_EVENTS = """
select id, occurred_at, kind, job_id, workflow_run_id, step_key, attempt, data, queue
from runledger.events
where (%(job_id)s::uuid is null or job_id = %(job_id)s)
  and (%(run_id)s::uuid is null or workflow_run_id = %(run_id)s)
  and (%(queue)s::text is null or queue = %(queue)s)
order by id
limit %(limit)s
"""


def get_job(conn: Conn, job_id: uuid.UUID) -> JobRecord:
    """The job with this id.

    Raises:
        InvalidId: ``job_id`` is not a UUID (or its text); nothing was sent.
        JobNotFound: there is none (or it was enqueued in a transaction not yet committed
            and not this one).
        SchemaNotMigrated: the schema is not installed (told before the query: the caller's
            transaction stays usable).
    """
    job_id = parse_id(job_id, field="job_id")
    with reading(conn), conn.cursor(row_factory=class_row(JobRecord)) as cur:
        found = cur.execute(GET_JOB, {"id": job_id}).fetchone()
    if found is None:
        raise JobNotFound(job_id=job_id)
    return found


def list_jobs(
    conn: Conn,
    *,
    status: JobStatus | str | None = None,
    queue: str | None = None,
    job_type: str | None = None,
    workflow_run_id: uuid.UUID | None = None,
    limit: int = 100,
) -> list[JobRecord]:
    """Jobs matching every filter given, oldest first, at most ``limit`` of them.

    Raises:
        InvalidId: ``workflow_run_id`` is not a UUID; nothing was sent.
        NulInText / SurrogateInText: ``queue`` or ``job_type`` cannot be sent as text.
    """
    for field, text in (("queue", queue), ("job_type", job_type)):
        if text is not None:
            check_text(field, text)
    params: dict[str, Any] = {
        "status": None if status is None else str(JobStatus(status)),
        "queue": queue,
        "job_type": job_type,
        "run_id": None
        if workflow_run_id is None
        else parse_id(workflow_run_id, field="workflow_run_id"),
        "limit": limit,
    }
    with reading(conn), conn.cursor(row_factory=class_row(JobRecord)) as cur:
        return cur.execute(LIST_JOBS, params).fetchall()


def list_attempts(conn: Conn, job_id: uuid.UUID) -> list[AttemptRecord]:
    """Every attempt of a job, in order.

    Raises:
        InvalidId: ``job_id`` is not a UUID; nothing was sent.
    """
    job_id = parse_id(job_id, field="job_id")
    with reading(conn), conn.cursor(row_factory=class_row(AttemptRecord)) as cur:
        return cur.execute(LIST_ATTEMPTS, {"job_id": job_id}).fetchall()


def get_workflow_run(conn: Conn, run_id: uuid.UUID) -> WorkflowRunRecord:
    """A workflow run with its steps (in topological order) and edges.

    Raises:
        InvalidId: ``run_id`` is not a UUID; nothing was sent.
        WorkflowRunNotFound: there is none.
    """
    run_id = parse_id(run_id, field="run_id")
    with reading(conn):
        with conn.cursor(row_factory=class_row(WorkflowRunRecord)) as cur:
            run = cur.execute(GET_RUN, {"id": run_id}).fetchone()
        if run is None:
            raise WorkflowRunNotFound(run_id=run_id)
        with conn.cursor(row_factory=class_row(StepRecord)) as cur:
            steps = cur.execute(LIST_STEPS, {"id": run_id}).fetchall()
        with conn.cursor(row_factory=class_row(EdgeRecord)) as cur:
            edges = cur.execute(LIST_EDGES, {"id": run_id}).fetchall()
    return attrs.evolve(run, steps=tuple(steps), edges=tuple(edges))


def list_events(
    conn: Conn,
    *,
    job_id: uuid.UUID | None = None,
    run_id: uuid.UUID | None = None,
    queue: str | None = None,
    limit: int | None = None,
) -> list[EventRecord]:
    """The ledger's events for a job, a workflow run and/or a queue (``queue.*`` events), in
    the order they were written.

    Raises:
        TypeError: none of ``job_id``, ``run_id`` and ``queue`` was given.
        InvalidId: one of them is not a UUID; nothing was sent.
    """
    if job_id is None and run_id is None and queue is None:
        raise TypeError("list_events needs job_id, run_id or queue")
    if job_id is not None:
        job_id = parse_id(job_id, field="job_id")
    if run_id is not None:
        run_id = parse_id(run_id, field="run_id")
    params = {"job_id": job_id, "run_id": run_id, "queue": queue, "limit": limit}
    with reading(conn), conn.cursor(row_factory=class_row(EventRecord)) as cur:
        return cur.execute(LIST_EVENTS, params).fetchall()
