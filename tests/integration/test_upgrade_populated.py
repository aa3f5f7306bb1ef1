"""Upgrading a populated version 1 database to the newest schema, for real: every row survives
the migrations unchanged, and a runtime of the new version finishes the work left behind.

The database is filled as version 1 left it when its runtimes were stopped: jobs in every
status (two still running under the expired leases of a worker that died), a workflow run
waiting on an external step, another with a queued step, schedules declared in code and
through the API, and their events. The public API writes what it still can on a version 1
schema (enqueue, enqueue_workflow, cancel_job, the schedules); plain SQL writes what only a
version 1 runtime wrote (claims and finishes, whose current statements name newer columns).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from psycopg import sql
from test_upgrade import install_version

import runledger
from runledger import AttemptOutcome, JobStatus, RetryPolicy, RunStatus, ScheduleSpec
from runledger.postgres.migrate import latest_version, pending
from runledger.postgres.schedules import sync_schedules

# The tables version 1 created (besides schema_migrations), parents first.
VERSION_1_TABLES = (
    "workflow_runs",
    "workflow_step_runs",
    "workflow_step_deps",
    "jobs",
    "job_attempts",
    "schedules",
    "events",
)

# A version 1 worker's claim of a queued job, its attempt and event, under a lease that has
# already expired: the worker died mid-attempt, without handing the job back.
CLAIMED_BY_A_DEAD_WORKER = """
with claimed as (
    update runledger.jobs
    set status = 'running', attempt = attempt + 1, max_attempts = %(max_attempts)s,
        lease_token = %(token)s, lease_owner = 'old-worker',
        lease_expires_at = now() - interval '1 second',
        started_at = now() - interval '31 seconds', deadline_at = now() + interval '1 hour',
        updated_at = now()
    where id = %(id)s and status = 'queued'
    returning id, attempt, lease_token, started_at
),
attempt as (
    insert into runledger.job_attempts (job_id, attempt, worker, lease_token, started_at)
    select id, attempt, 'old-worker', lease_token, started_at from claimed
)
insert into runledger.events (kind, job_id, attempt)
select 'job.started', id, attempt from claimed
"""

# A version 1 worker's claim and finish of a queued job in one go (status succeeded or
# failed), with its attempt and both events.
FINISHED_BY_AN_OLD_WORKER = """
with finished as (
    update runledger.jobs
    set status = %(status)s, attempt = 1, max_attempts = 1,
        started_at = now() - interval '2 seconds', finished_at = now(), updated_at = now(),
        output = %(output)s::jsonb, last_error = %(error)s
    where id = %(id)s and status = 'queued'
    returning id, started_at, finished_at
),
attempt as (
    insert into runledger.job_attempts (
        job_id, attempt, worker, lease_token, started_at, finished_at, outcome, error_type,
        error_message)
    select id, 1, 'old-worker', %(token)s, started_at, finished_at, %(status)s,
           %(error_type)s, %(error)s
    from finished
)
insert into runledger.events (kind, job_id, attempt)
select kind, id, 1 from finished, unnest(array['job.started', 'job.' || %(status)s]) as kind
"""

# Every status a version 1 row can be in, counted per table.
STATUS_COUNTS = """
select 'jobs', status, count(*) from runledger.jobs group by status
union all
select 'workflow_runs', status, count(*) from runledger.workflow_runs group by status
union all
select 'workflow_step_runs', status, count(*) from runledger.workflow_step_runs group by status
union all
select 'job_attempts', coalesce(outcome, 'open'), count(*) from runledger.job_attempts
group by outcome
union all
select 'events', kind, count(*) from runledger.events group by kind
"""


@attrs.frozen
class Left:
    """What the stopped version 1 runtimes left in the database."""

    queued: uuid.UUID
    queued_later: uuid.UUID
    died_last_attempt: uuid.UUID
    died_with_retries: uuid.UUID
    succeeded: uuid.UUID
    failed: uuid.UUID
    cancelled: uuid.UUID
    waiting_run: uuid.UUID
    queued_run: uuid.UUID


def registry_of_the_app() -> runledger.Registry:
    """The app's registry: the same declarations before and after the upgrade."""
    registry = runledger.Registry()

    @registry.handler("upgrade.job")
    def job(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload["n"]

    # No backoff: the job retried after its worker died runs again at once.
    @registry.handler("upgrade.crashed", retry=RetryPolicy(base=0.0, jitter=0.0))
    def crashed(ctx: runledger.JobContext, payload: Any) -> Any:
        return "recovered"

    @registry.handler("upgrade.step")
    def step(ctx: runledger.JobContext, payload: Any) -> Any:
        return {"step": payload["step"], "upstream": sorted(ctx.upstream)}

    @registry.handler("upgrade.tick")
    def tick(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload["origin"]

    registry.schedule(
        "upgrade.hourly", cron="0 * * * *", job_type="upgrade.tick", payload={"origin": "code"}
    )
    return registry


def fill_as_version_1(conn: psycopg.Connection[Any], registry: runledger.Registry) -> Left:
    """Write what version 1's API and runtimes would have, with the runtimes stopped since."""
    enqueue = runledger.enqueue
    queued = enqueue(conn, "upgrade.job", {"n": 1})
    # Keyed as version 1's enqueue keyed it (today's also writes runledger.job_keys).
    conn.execute(
        "update runledger.jobs set idempotency_key = 'upgrade-queued', "
        "request_fingerprint = 'v1' where id = %s",
        (queued,),
    )
    queued_later = enqueue(conn, "upgrade.job", {"n": 2}, delay=2.0)
    died_last_attempt = enqueue(conn, "upgrade.crashed", {"n": 3})
    died_with_retries = enqueue(conn, "upgrade.crashed", {"n": 4})
    for job_id, max_attempts in ((died_last_attempt, 1), (died_with_retries, 3)):
        conn.execute(
            CLAIMED_BY_A_DEAD_WORKER,
            {"id": job_id, "token": uuid.uuid4(), "max_attempts": max_attempts},
        )
    succeeded = enqueue(conn, "upgrade.job", {"n": 5})
    conn.execute(
        FINISHED_BY_AN_OLD_WORKER,
        {
            "id": succeeded,
            "token": uuid.uuid4(),
            "status": "succeeded",
            "output": "5",
            "error": None,
            "error_type": None,
        },
    )
    failed = enqueue(conn, "upgrade.job", {"n": 6})
    conn.execute(
        FINISHED_BY_AN_OLD_WORKER,
        {
            "id": failed,
            "token": uuid.uuid4(),
            "status": "failed",
            "output": None,
            "error": "ValueError: bad invoice",
            "error_type": "ValueError",
        },
    )
    cancelled = enqueue(conn, "upgrade.job", {"n": 7})
    assert runledger.cancel_job(conn, cancelled, reason="customer asked")

    approval = (
        runledger.WorkflowBuilder("upgrade.approval")
        .idempotency_key("approval-1")
        .result_step("finish")
        .step("approve")
        .external()
        .step("finish")
        .after("approve")
        .job("upgrade.step")
        .payload({"step": "finish"})
        .build()
    )
    waiting_run = runledger.enqueue_workflow(conn, approval, registry)
    pipeline = (
        runledger.WorkflowBuilder("upgrade.pipeline")
        .step("first")
        .job("upgrade.step")
        .payload({"step": "first"})
        .step("second")
        .after("first")
        .job("upgrade.step")
        .payload({"step": "second"})
        .build()
    )
    queued_run = runledger.enqueue_workflow(conn, pipeline, registry)

    # What a version 1 runtime's start wrote for the registry, and a schedule of the API.
    with conn.transaction():
        job_types = {*registry.job_types(), *(s.job_type for s in registry.schedules())}
        sync_schedules(conn, registry.schedules(), job_types=job_types)
    runledger.upsert_schedule(
        conn,
        ScheduleSpec(
            name="upgrade.nightly",
            cron="0 3 * * *",
            job_type="upgrade.tick",
            payload={"origin": "api"},
        ),
    )
    # Both came due while the runtimes were stopped.
    conn.execute("update runledger.schedules set next_run_at = now() - interval '1 minute'")
    return Left(
        queued=queued,
        queued_later=queued_later,
        died_last_attempt=died_last_attempt,
        died_with_retries=died_with_retries,
        succeeded=succeeded,
        failed=failed,
        cancelled=cancelled,
        waiting_run=waiting_run,
        queued_run=queued_run,
    )


def version_1_columns(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Each table's columns (views aside), in order, as the database has them now."""
    columns: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "select c.table_name, c.column_name from information_schema.columns as c "
        "join information_schema.tables as t using (table_schema, table_name) "
        "where c.table_schema = 'runledger' and t.table_type = 'BASE TABLE' "
        "and c.table_name <> 'schema_migrations' "
        "order by c.table_name, c.ordinal_position"
    ).fetchall():
        columns.setdefault(table, []).append(column)
    return columns


def rows(conn: psycopg.Connection[Any], columns: dict[str, list[str]]) -> dict[str, list[Any]]:
    """Every row of every table, limited to ``columns`` and sorted on them."""
    found: dict[str, list[Any]] = {}
    for table, names in columns.items():
        listed = sql.SQL(", ").join(sql.Identifier(name) for name in names)
        query = sql.SQL("select {} from runledger.{} order by {}").format(
            listed, sql.Identifier(table), listed
        )
        found[table] = conn.execute(query).fetchall()
    return found


def counts(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    return {(table, status): n for table, status, n in conn.execute(STATUS_COUNTS).fetchall()}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@attrs.frozen
class Populated:
    """A version 1 database as its stopped runtimes left it, and a copy of its rows."""

    left: Left
    columns: dict[str, list[str]]
    rows: dict[str, list[Any]]
    counts: dict[tuple[str, str], int]


def populated_version_1(conn: psycopg.Connection[Any], registry: runledger.Registry) -> Populated:
    install_version(conn, 1)
    left = fill_as_version_1(conn, registry)
    columns = version_1_columns(conn)
    assert sorted(columns) == sorted(VERSION_1_TABLES)
    return Populated(left=left, columns=columns, rows=rows(conn, columns), counts=counts(conn))


def test_upgrading_a_populated_version_1_database_keeps_every_row_and_value(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        before = populated_version_1(conn, registry_of_the_app())
        assert {k: n for k, n in before.counts.items() if k[0] != "events"} == {
            ("jobs", "queued"): 3,  # two jobs and the pipeline's first step
            ("jobs", "running"): 2,
            ("jobs", "succeeded"): 1,
            ("jobs", "failed"): 1,
            ("jobs", "cancelled"): 1,
            ("workflow_runs", "waiting"): 1,
            ("workflow_runs", "running"): 1,
            ("workflow_step_runs", "waiting"): 1,
            ("workflow_step_runs", "blocked"): 2,
            ("workflow_step_runs", "queued"): 1,
            ("job_attempts", "open"): 2,
            ("job_attempts", "succeeded"): 1,
            ("job_attempts", "failed"): 1,
        }
        assert before.counts["events", "job.enqueued"] == 8
        assert len(before.rows["schedules"]) == 2

        applied = runledger.migrate(conn)

        assert applied == list(range(2, latest_version() + 1))
        assert pending(conn) == ()
        runledger.check_schema(conn)
        # Every row is still there, with every value version 1 wrote.
        assert counts(conn) == before.counts
        assert rows(conn, before.columns) == before.rows
        origins = conn.execute("select name, origin from runledger.schedules order by 1")
        assert origins.fetchall() == [("upgrade.hourly", "registry"), ("upgrade.nightly", "api")]


def run_the_new_version(dsn: str, conn: psycopg.Connection[Any], left: Left) -> str:
    """Run a runtime of this version until the work left at the upgrade is done, signalling
    the external step on the way; return its worker id."""
    with runledger.Runtime(
        dsn,
        registry_of_the_app(),
        concurrency=2,
        poll_interval=0.05,
        listen=False,
        reap_interval=0.2,
        schedule_interval=0.1,
    ) as rt:
        assert runledger.complete_external_step(
            conn, left.waiting_run, "approve", output={"approved": True}
        )
        for run_id in (left.waiting_run, left.queued_run):
            finished = runledger.wait_for_run(dsn, run_id, 60, poll_interval=0.1)
            assert finished.status == RunStatus.SUCCEEDED, finished

        def status(job_id: uuid.UUID) -> JobStatus:
            return runledger.get_job(conn, job_id).status

        wait_until(
            lambda: all(
                status(job_id) == JobStatus.SUCCEEDED
                for job_id in (left.queued, left.queued_later, left.died_with_retries)
            ),
            "the jobs queued or running at the upgrade to succeed",
        )
        wait_until(
            lambda: status(left.died_last_attempt) == JobStatus.FAILED,
            "the dead worker's job on its last attempt to fail",
        )
        fired = (
            "select s.name, j.status from runledger.schedules as s "
            "join runledger.jobs as j on j.id = s.last_job_id order by s.name"
        )
        wait_until(
            lambda: (
                conn.execute(fired).fetchall()
                == [("upgrade.hourly", "succeeded"), ("upgrade.nightly", "succeeded")]
            ),
            "both overdue schedules to fire a job that succeeds",
        )
        return rt.worker_id


def test_the_new_version_finishes_the_work_a_version_1_database_was_left_with(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        before = populated_version_1(conn, registry_of_the_app())
        left = before.left
        runledger.migrate(conn)

        worker_id = run_the_new_version(empty_database, conn, left)

        # The jobs queued before the upgrade ran, the one due later not before its time.
        assert runledger.get_job(conn, left.queued).output == 1
        later = runledger.get_job(conn, left.queued_later)
        assert later.output == 2
        assert later.started_at is not None and later.started_at >= later.run_at

        # The dead worker's jobs were reaped: retried while attempts were left, else failed.
        retried = runledger.get_job(conn, left.died_with_retries)
        assert (retried.attempt, retried.output) == (2, "recovered")
        assert [(a.outcome, a.worker) for a in runledger.list_attempts(conn, retried.id)] == [
            (AttemptOutcome.LEASE_EXPIRED, "old-worker"),
            (AttemptOutcome.SUCCEEDED, worker_id),
        ]
        dead = runledger.get_job(conn, left.died_last_attempt)
        assert dead.attempt == 1
        assert [a.outcome for a in runledger.list_attempts(conn, dead.id)] == [
            AttemptOutcome.LEASE_EXPIRED
        ]

        # The signalled run went on from its external step; the other ran both its steps.
        approval = runledger.get_workflow_run(conn, left.waiting_run)
        assert approval.result == {"step": "finish", "upstream": ["approve"]}
        pipeline = runledger.get_workflow_run(conn, left.queued_run)
        assert {s.step_key: s.status for s in pipeline.steps} == {
            "first": runledger.StepStatus.SUCCEEDED,
            "second": runledger.StepStatus.SUCCEEDED,
        }

        # Each schedule fired the tick it missed, and waits for its next one.
        for name, origin in (("upgrade.hourly", "code"), ("upgrade.nightly", "api")):
            outputs = conn.execute(
                "select output from runledger.jobs where schedule_name = %s order by scheduled_at",
                (name,),
            ).fetchall()
            assert outputs[0] == (origin,)
            row = conn.execute(
                "select next_run_at > now(), last_run_at is not null "
                "from runledger.schedules where name = %s",
                (name,),
            ).fetchone()
            assert row == (True, True)

        # The jobs finished before the upgrade, and the history, are as version 1 left them
        # (events sort by id first: the old ones come before any the new runtime wrote).
        job_id = before.columns["jobs"].index("id")
        finished = {left.succeeded, left.failed, left.cancelled}
        after = rows(conn, {table: before.columns[table] for table in ("jobs", "events")})
        assert [r for r in after["jobs"] if r[job_id] in finished] == [
            r for r in before.rows["jobs"] if r[job_id] in finished
        ]
        assert after["events"][: len(before.rows["events"])] == before.rows["events"]

        # The history left in the hot table moved to job_history (the reaper settles it), and
        # every finished job is there now; the hot table keeps only live rows.
        wait_until(
            lambda: (
                conn.execute(
                    "select count(*) from only runledger.jobs where finished_at is not null"
                ).fetchone()
                == (0,)
            ),
            "the finished jobs of version 1 to move to runledger.job_history",
        )
        in_history = {
            row[0] for row in conn.execute("select id from runledger.job_history").fetchall()
        }
        assert finished <= in_history
        live = conn.execute("select count(*) from only runledger.jobs").fetchone()
        assert live == (0,)

        # The key of the job version 1 enqueued still holds, though the job has finished.
        again = conn.execute(
            "select job_id from runledger.job_keys where idempotency_key = 'upgrade-queued'"
        ).fetchone()
        assert again == (left.queued,)
