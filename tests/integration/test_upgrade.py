"""Upgrading a populated database from each earlier schema version to the shipped one."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, JobStatus
from runledger.postgres import attempts
from runledger.postgres.migrate import BOOTSTRAP, RECORD, latest_version, migrations
from runledger.postgres.retention import prune_jobs
from runledger.runtime.reaper import Reaper

# A running attempt as version 1 claimed it (it knew nothing of handler_started_at), with a
# lease that has already expired: its worker died.
CLAIMED_BY_VERSION_1 = """
with claimed as (
    update runledger.jobs
    set status = 'running', attempt = attempt + 1, max_attempts = 1,
        lease_token = %(token)s, lease_owner = 'old-worker',
        lease_expires_at = now() - interval '1 second', started_at = now(), updated_at = now()
    where id = %(id)s
    returning id, attempt, lease_token, started_at
)
insert into runledger.job_attempts (job_id, attempt, worker, lease_token, started_at)
select id, attempt, 'old-worker', lease_token, started_at from claimed
"""


# The claimed job's success as a version 7 worker wrote it (the move to job_history is the
# schema's own trigger).
SUCCEEDED_BY_VERSION_7 = """
update runledger.jobs
set status = 'succeeded', lease_token = null, lease_owner = null, lease_expires_at = null,
    finished_at = now(), updated_at = now()
where id = %(id)s and status = 'running'
"""


RETRIED_EVENT = (
    "insert into runledger.events (kind, workflow_run_id) values ('run.retried', gen_random_uuid())"
)


def install_version(conn: psycopg.Connection[Any], version: int) -> None:
    """Apply the shipped migrations up to ``version`` exactly as ``migrate`` records them."""
    conn.execute(BOOTSTRAP)
    for migration in migrations():
        if migration.version > version:
            break
        with conn.transaction():
            conn.execute(migration.sql)  # type: ignore[arg-type]
            conn.execute(
                RECORD,
                {
                    "version": migration.version,
                    "name": migration.name,
                    "checksum": migration.checksum,
                },
            )


def succeed(conn: psycopg.Connection[Any], claimed: Sequence[attempts.ClaimedJob]) -> None:
    """Finish these claimed jobs as succeeded, as a worker of this version does."""
    attempts.finish(conn, [attempts.AttemptResult(
        job_id=j.id, lease_token=j.lease_token, status=JobStatus.SUCCEEDED,
        outcome=AttemptOutcome.SUCCEEDED, output=None,
    ) for j in claimed])  # fmt: skip


def run_on_upgraded_schema(dsn: str, conn: psycopg.Connection[Any], job_id: uuid.UUID) -> Any:
    """Run a job queued before the upgrade (an ``upgrade.later`` job returning its payload's
    ``n``) with a runtime on the upgraded schema; return its output."""
    registry = runledger.Registry()

    @registry.handler("upgrade.later")
    def later(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload["n"]

    with runledger.Runtime(dsn, registry, concurrency=1, poll_interval=0.05, listen=False):
        deadline_polls = 500
        while runledger.get_job(conn, job_id).status != JobStatus.SUCCEEDED:
            deadline_polls -= 1
            assert deadline_polls > 0, "the queued job never ran after the upgrade"
            conn.execute("select pg_sleep(0.02)")
    return runledger.get_job(conn, job_id).output


def test_upgrading_a_populated_version_1_database_keeps_its_jobs_and_their_accounting(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 1)
        assert runledger.schema_version(conn) == 1
        queued = runledger.enqueue(conn, "upgrade.later", {"n": 1})
        running = runledger.enqueue(conn, "upgrade.crashed", {"n": 2})
        conn.execute(CLAIMED_BY_VERSION_1, {"id": running, "token": uuid.uuid4()})

        assert runledger.migrate(conn) == [v for v in range(2, latest_version() + 1)]
        runledger.check_schema(conn)

        # The attempt running at the upgrade is charged on expiry, as version 1 would have.
        row = conn.execute(
            "select handler_started_at = started_at from runledger.jobs where id = %s",
            (running,),
        ).fetchone()
        assert row == (True,)
        registry = runledger.Registry()
        with runledger.Store(empty_database, max_size=2) as store:
            assert Reaper(store, registry, interval=1.0, vacuum=False).reap_once() == 1
        crashed = runledger.get_job(conn, running)
        assert (crashed.status, crashed.attempt) == (JobStatus.FAILED, 1)
        attempts = runledger.list_attempts(conn, running)
        assert [a.outcome for a in attempts] == [AttemptOutcome.LEASE_EXPIRED]

        # The job queued before the upgrade runs on the upgraded schema.
        assert run_on_upgraded_schema(empty_database, conn, queued) == 1


def test_upgrading_a_populated_version_2_database_adds_the_workers_table(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 2)
        assert runledger.schema_version(conn) == 2
        queued = runledger.enqueue(conn, "upgrade.later", {"n": 3})
        running = runledger.enqueue(conn, "upgrade.crashed", {"n": 4})
        # Claimed by a version 2 worker whose handler started, and which died since.
        conn.execute(CLAIMED_BY_VERSION_1, {"id": running, "token": uuid.uuid4()})
        conn.execute(
            "update runledger.jobs set handler_started_at = started_at where id = %s", (running,)
        )

        assert runledger.migrate(conn) == [v for v in range(3, latest_version() + 1)]
        runledger.check_schema(conn)
        assert conn.execute("select count(*) from runledger.workers").fetchone() == (0,)

        # A runtime on the upgraded schema registers itself, reaps the attempt left running
        # at the upgrade and runs the job queued before it, as the worker its row names.
        registry = runledger.Registry()

        @registry.handler("upgrade.later")
        def later(ctx: runledger.JobContext, payload: Any) -> Any:
            return payload["n"]

        with runledger.Runtime(
            empty_database, registry, concurrency=1, poll_interval=0.05, listen=False
        ) as rt:
            row = conn.execute("select id, pid from runledger.workers").fetchall()
            assert [r[0] for r in row] == [rt.worker_id]
            deadline_polls = 500
            while runledger.get_job(conn, queued).status != JobStatus.SUCCEEDED:
                deadline_polls -= 1
                assert deadline_polls > 0, "the queued job never ran after the upgrade"
                conn.execute("select pg_sleep(0.02)")
            rt.reap_now()  # unless its reaper's first round took it already
        assert runledger.get_job(conn, queued).output == 3
        assert runledger.get_job(conn, running).status == JobStatus.FAILED
        [attempt] = runledger.list_attempts(conn, queued)
        assert attempt.worker == rt.worker_id
        assert conn.execute("select count(*) from runledger.workers").fetchone() == (0,)


def test_upgrading_a_populated_version_3_database_adds_the_trace_context_columns(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 3)
        assert runledger.schema_version(conn) == 3
        # Enqueue without an active span writes no trace_context: it works on version 3.
        queued = runledger.enqueue(conn, "upgrade.later", {"n": 5})

        assert runledger.migrate(conn) == [v for v in range(4, latest_version() + 1)]
        runledger.check_schema(conn)
        row = conn.execute(
            "select trace_context from runledger.jobs where id = %s", (queued,)
        ).fetchone()
        assert row == (None,)

        assert run_on_upgraded_schema(empty_database, conn, queued) == 5


def test_upgrading_a_populated_version_6_database_allows_snoozes_and_adds_progress(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 6)
        assert runledger.schema_version(conn) == 6
        queued = runledger.enqueue(conn, "upgrade.snoozy", {"n": 7})
        done = runledger.enqueue(conn, "upgrade.crashed", {"n": 8})
        # A version 6 worker's claim, left running under a live lease, and a job it failed.
        conn.execute(CLAIMED_BY_VERSION_1, {"id": done, "token": uuid.uuid4()})
        conn.execute(
            "update runledger.jobs set status = 'failed', lease_token = null, lease_owner = null,"
            " lease_expires_at = null, finished_at = now() where id = %s",
            (done,),
        )
        conn.execute(
            "update runledger.job_attempts set outcome = 'failed', finished_at = now() "
            "where job_id = %s",
            (done,),
        )

        assert runledger.migrate(conn) == [v for v in range(7, latest_version() + 1)]
        runledger.check_schema(conn)
        # The rows written before the upgrade are as they were, with no progress.
        old = runledger.get_job(conn, done)
        assert (old.status, old.attempt, old.progress) == (JobStatus.FAILED, 1, None)
        assert [a.outcome for a in runledger.list_attempts(conn, done)] == [AttemptOutcome.FAILED]
        assert runledger.get_job(conn, queued).progress is None

        # The job queued before the upgrade snoozes once and reports progress on it.
        registry = runledger.Registry()
        runs: list[int] = []

        @registry.handler("upgrade.snoozy")
        def snoozy(ctx: runledger.JobContext, payload: Any) -> Any:
            ctx.progress(0.5, note="half")
            runs.append(ctx.attempt)
            if len(runs) == 1:
                raise runledger.Snooze(after=0)
            return payload["n"]

        with runledger.Runtime(
            empty_database, registry, concurrency=1, poll_interval=0.05, listen=False
        ):
            deadline_polls = 500
            while runledger.get_job(conn, queued).status != JobStatus.SUCCEEDED:
                deadline_polls -= 1
                assert deadline_polls > 0, "the queued job never ran after the upgrade"
                conn.execute("select pg_sleep(0.02)")
        job = runledger.get_job(conn, queued)
        assert runs == [1, 1]
        assert (job.attempt, job.output, job.progress["note"]) == (1, 7, "half")
        assert [a.outcome for a in runledger.list_attempts(conn, queued)] == [
            AttemptOutcome.SNOOZED,
            AttemptOutcome.SUCCEEDED,
        ]
        kinds = [e.kind for e in runledger.list_events(conn, job_id=queued)]
        assert runledger.EventKind.JOB_SNOOZED in kinds


def test_upgrading_a_populated_version_7_database_lets_keys_pass_to_new_jobs(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 7)
        assert runledger.schema_version(conn) == 7
        live = runledger.enqueue(conn, "upgrade.keyed", {"n": 1}, idempotency_key="live")
        done = runledger.enqueue(conn, "upgrade.done", {"n": 2}, idempotency_key="done")
        # Run by a version 7 worker (today's claim and finish need schema 9's flow control).
        conn.execute(CLAIMED_BY_VERSION_1, {"id": done, "token": uuid.uuid4()})
        conn.execute(SUCCEEDED_BY_VERSION_7, {"id": done})
        # Finished but still in the hot table, as rows written before version 6 stay until the
        # reapers settle them: its key is in jobs_idempotency_key until 0008 drops the index.
        conn.execute("select runledger.reopen_jobs(array[%s]::uuid[])", (done,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(RETRIED_EVENT)

        assert runledger.migrate(conn) == [v for v in range(8, latest_version() + 1)]
        runledger.check_schema(conn)
        assert conn.execute("select to_regclass('runledger.jobs_idempotency_key')").fetchone() == (
            None,
        )
        # Keys written by version 6 hold as before.
        assert runledger.enqueue(conn, "upgrade.keyed", {"n": 1}, idempotency_key="live") == live
        with pytest.raises(runledger.errors.IdempotencyConflict):
            runledger.enqueue(conn, "upgrade.keyed", {"n": 9}, idempotency_key="live")
        assert runledger.enqueue(conn, "upgrade.done", {"n": 2}, idempotency_key="done") == done
        # A key whose finished job is still in the hot table passes to a new job.
        fresh = runledger.enqueue(
            conn, "upgrade.done", {"n": 2}, idempotency_key="done", unique=runledger.Unique.active()
        )
        assert fresh != done
        keyed = conn.execute(
            "select id, status from only runledger.jobs where idempotency_key = 'done' order by id"
        ).fetchall()
        assert keyed == [(done, "succeeded"), (fresh, "queued")]
        # Retried runs have their event now. The widened CHECK did not scan the old rows in
        # version 8; version 12 validated it, once, to make the table segment 0 of the events.
        conn.execute(RETRIED_EVENT)
        assert conn.execute(
            "select convalidated from pg_constraint"
            " where conname = 'events_kind_check' and conrelid = 'runledger.events_s0'::regclass"
        ).fetchone() == (True,)


def test_upgrading_a_populated_version_8_database_adds_flow_control(empty_database: str) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 8)
        assert runledger.schema_version(conn) == 8
        queued = runledger.enqueue(conn, "upgrade.later", {"n": 5})
        running = runledger.enqueue(conn, "upgrade.crashed", {"n": 6})
        finished = runledger.enqueue(conn, "upgrade.later", {"n": 7})
        # A worker of version 8 died running one job and finished another.
        conn.execute(CLAIMED_BY_VERSION_1, {"id": running, "token": uuid.uuid4()})
        conn.execute(
            "update runledger.jobs set handler_started_at = started_at where id = %s", (running,)
        )
        conn.execute(CLAIMED_BY_VERSION_1, {"id": finished, "token": uuid.uuid4()})
        conn.execute(SUCCEEDED_BY_VERSION_7, {"id": finished})

        assert runledger.migrate(conn) == list(range(9, latest_version() + 1))
        runledger.check_schema(conn)
        # The new columns are null on every old row, and their CHECKs did not scan them.
        rows = conn.execute(
            "select count(*) from runledger.jobs where concurrency_key is not null"
            " or concurrency_limit is not null"
        ).fetchone()
        assert rows == (0,)
        assert conn.execute(
            "select bool_or(convalidated) from pg_constraint"
            " where conname like 'jobs_concurrency%%'"
        ).fetchone() == (False,)

        # The dead worker's job is reaped on the new schema; the queued one runs there.
        registry = runledger.Registry()
        with runledger.Store(empty_database, max_size=2) as store:
            assert Reaper(store, registry, interval=1.0, vacuum=False).reap_once() == 1
        assert runledger.get_job(conn, finished).status is JobStatus.SUCCEEDED
        assert run_on_upgraded_schema(empty_database, conn, queued) == 5
        # And the new options work on the upgraded database.
        keyed = runledger.enqueue(conn, "upgrade.later", {"n": 8}, concurrency_key="k")
        assert runledger.get_job(conn, keyed).concurrency_limit == 1


def test_upgrading_a_populated_version_9_database_prunes_old_jobs_once_and_frees_their_keys(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 9)
        assert runledger.schema_version(conn) == 9
        done = runledger.enqueue(conn, "upgrade.done", {"n": 1}, idempotency_key="k")
        live = runledger.enqueue(conn, "upgrade.later", {"n": 2})
        (claimed,) = attempts.claim(
            conn, worker="old-worker", queues=["default"], job_types=["upgrade.done"], limit=1,
            lease_seconds=30,
        )  # fmt: skip
        succeed(conn, [claimed])
        conn.execute(
            "update runledger.jobs set finished_at = now() - interval '30 days' where id = %s",
            (done,),
        )

        assert runledger.migrate(conn) == [v for v in range(10, latest_version() + 1)]
        runledger.check_schema(conn)
        with conn.transaction():
            pruned = prune_jobs(conn, JobStatus.SUCCEEDED, datetime.timedelta(days=7))
        # Its attempt counted once, by the statement that deleted it; its key is free.
        assert (pruned.jobs, pruned.attempts, pruned.events) == (1, 1, 3)
        assert conn.execute(
            "select count(*) from runledger.job_attempts where job_id = %s", (done,)
        ).fetchone() == (0,)
        again = runledger.enqueue(conn, "upgrade.done", {"n": 1}, idempotency_key="k")
        assert again != done
        # A delete by hand still takes the job's attempts with it.
        conn.execute("delete from runledger.jobs where id = %s", (again,))
        assert run_on_upgraded_schema(empty_database, conn, live) == 2


def test_upgrading_a_populated_version_10_database_indexes_its_queued_keyed_jobs(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 10)
        assert runledger.schema_version(conn) == 10
        first = runledger.enqueue(conn, "upgrade.later", {"n": 1}, concurrency_key="k")
        second = runledger.enqueue(conn, "upgrade.later", {"n": 2}, concurrency_key="k")
        plain = runledger.enqueue(conn, "upgrade.later", {"n": 3})

        assert runledger.migrate(conn) == [v for v in range(11, latest_version() + 1)]
        runledger.check_schema(conn)
        assert conn.execute(
            "select indexdef like '%%(queue)%%' from pg_indexes"
            " where schemaname = 'runledger' and indexname = 'jobs_queued_keys'"
        ).fetchone() == (True,)
        # The claim's gate finds the keyed jobs queued before the upgrade, and the claim still
        # admits them one at a time: the key's limit of 1 holds across the upgrade.
        got = attempts.claim_round(
            conn, worker="w", queues=["default"], job_types=["upgrade.later"], limit=10,
            lease_seconds=30,
        )  # fmt: skip
        assert got.flow_control
        assert sorted(j.payload["n"] for j in got.jobs) == [1, 3]  # type: ignore[index]
        succeed(conn, got.jobs)
        assert {first, plain} == {j.id for j in got.jobs}
        assert run_on_upgraded_schema(empty_database, conn, second) == 2


EVENT_COLUMNS = "id, occurred_at, kind, job_id, workflow_run_id, step_key, attempt, data, queue"


def test_upgrading_a_populated_version_11_database_makes_its_events_segment_0(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 11)
        assert runledger.schema_version(conn) == 11
        done = runledger.enqueue(conn, "upgrade.done", {"n": 1})
        live = runledger.enqueue(conn, "upgrade.later", {"n": 2})
        (claimed,) = attempts.claim(
            conn, worker="old-worker", queues=["default"], job_types=["upgrade.done"], limit=1,
            lease_seconds=30,
        )  # fmt: skip
        succeed(conn, [claimed])
        run_id = runledger.enqueue_workflow(
            conn, runledger.WorkflowBuilder("upgrade.flow").step("wait", external=True).build()
        )
        runledger.pause_queue(conn, "upgrade.paused")
        # An id the identity handed out and rolled back: the sequence that takes over goes on
        # from the identity, not from the highest id kept.
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute("insert into runledger.events (kind, queue) values ('bogus', 'q')")
        events = conn.execute(
            f"select {EVENT_COLUMNS} from runledger.events order by id"
        ).fetchall()
        assert len(events) == 7  # 3 of done, 1 of live, 2 of the run, 1 of the queue

        assert runledger.migrate(conn) == [v for v in range(12, latest_version() + 1)]
        runledger.check_schema(conn)

        # Every event is kept, in segment 0, which is the old table.
        after = conn.execute(
            f"select {EVENT_COLUMNS}, segment, tableoid::regclass::text from runledger.events "
            "order by id"
        ).fetchall()
        assert [row[:-2] for row in after] == events
        assert {row[-2:] for row in after} == {(0, "runledger.events_s0")}
        assert conn.execute(
            "select segment, closed_at from runledger.event_segments"
        ).fetchall() == [(0, None)]
        assert conn.execute(
            "select relkind from pg_class where oid = 'runledger.events'::regclass"
        ).fetchone() == ("p",)
        # New events take the next ids, past the one rolled back.
        runledger.complete_external_step(conn, run_id, "wait", output=None)
        newest = conn.execute(
            "select min(id) from runledger.events where id > %s", (events[-1][0],)
        ).fetchone()
        assert newest is not None and newest[0] == events[-1][0] + 2
        assert run_on_upgraded_schema(empty_database, conn, live) == 2
        # The job finished before the upgrade is pruned with its events as before (row by row).
        conn.execute(
            "update runledger.jobs set finished_at = now() - interval '30 days' where id = %s",
            (done,),
        )
        with conn.transaction():
            pruned = prune_jobs(conn, JobStatus.SUCCEEDED, datetime.timedelta(days=7))
        assert (pruned.jobs, pruned.attempts, pruned.events) == (1, 1, 3)
