"""Pruning finished jobs and runs (runledger.postgres.retention): what goes, what stays."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterable
from typing import Any

import psycopg

import runledger
from runledger import JobStatus, WorkflowBuilder
from runledger.postgres.maintenance import vacuum_history_if_needed
from runledger.postgres.retention import (
    PRUNE_LOCK_KEY,
    count_prunable,
    prune_jobs,
    prune_runs,
    sweep_orphan_events,
)
from tests.integration.conftest import Counter

WEEK = datetime.timedelta(days=7)
Conn = psycopg.Connection[Any]


def run_everything(dsn: str, conn: Conn) -> None:
    """Run every queued job with a runtime that prunes nothing: ``ret.ok`` succeeds,
    ``ret.bad`` fails for good on its first attempt."""
    registry = runledger.Registry()

    @registry.handler("ret.ok")
    def ok(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload

    @registry.handler("ret.bad", max_attempts=1)
    def bad(ctx: runledger.JobContext, payload: Any) -> Any:
        raise ValueError("no")

    with runledger.Runtime(dsn, registry, poll_interval=0.05, listen=False, retention=None):
        deadline = time.monotonic() + 30
        while conn.execute(
            "select count(*) from runledger.jobs where status in ('queued', 'running')"
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the jobs never finished"
            conn.execute("select pg_sleep(0.02)")


def age(conn: Conn, table: str, ids: Iterable[uuid.UUID], days: int) -> None:
    """Pretend the rows finished ``days`` days earlier than they did."""
    assert table in ("jobs", "workflow_runs")
    conn.execute(
        f"update runledger.{table} set finished_at = finished_at - make_interval(days => %s) "
        "where id = any(%s)",
        (days, list(ids)),
    )


def test_prune_jobs_deletes_old_finished_jobs_with_their_attempts_and_events_only(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    old_ok = [runledger.enqueue(conn, "ret.ok", {"n": n}) for n in range(3)]
    young_ok = runledger.enqueue(conn, "ret.ok", {"n": 9})
    old_bad = runledger.enqueue(conn, "ret.bad")
    run_everything(dsn, conn)
    queued = runledger.enqueue(conn, "ret.later", run_at=None)
    age(conn, "jobs", [*old_ok, old_bad], days=8)
    assert count("job_attempts", "job_id = any(%s)", (old_ok,)) == 3
    assert count("events", "job_id = any(%s)", (old_ok,)) >= 9

    with conn.transaction():
        pruned = prune_jobs(conn, JobStatus.SUCCEEDED, WEEK)

    assert (pruned.jobs, pruned.attempts, pruned.locked) == (3, 3, True)
    assert pruned.events == 9  # enqueued, started, succeeded each
    assert count("jobs", "id = any(%s)", (old_ok,)) == 0
    assert count("job_attempts", "job_id = any(%s)", (old_ok,)) == 0
    assert count("events", "job_id = any(%s)", (old_ok,)) == 0
    # Younger, queued and other-status jobs stay, with their attempts and events.
    for kept in (young_ok, old_bad, queued):
        assert count("jobs", "id = %s", (kept,)) == 1
    assert count("job_attempts", "job_id = %s", (young_ok,)) == 1
    assert count("events", "job_id = %s", (old_bad,)) >= 3

    with conn.transaction():
        failed = prune_jobs(conn, JobStatus.FAILED, WEEK)
    assert (failed.jobs, failed.attempts) == (1, 1)
    assert count("jobs", "id = %s", (old_bad,)) == 0


def test_a_batch_is_bounded_oldest_first_and_counted_beforehand(
    autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    jobs = [runledger.enqueue(conn, "ret.x") for _ in range(5)]
    for n, job in enumerate(jobs):
        runledger.cancel_job(conn, job)
        age(conn, "jobs", [job], days=10 + n)  # the last is the oldest

    before = count_prunable(conn, JobStatus.CANCELLED, WEEK)
    assert (before.jobs, before.attempts, before.events) == (5, 0, 10)

    with conn.transaction():
        first = prune_jobs(conn, JobStatus.CANCELLED, WEEK, limit=2)
    assert first.jobs == 2
    assert count("jobs", "id = any(%s)", (jobs[3:],)) == 0  # the two oldest went first
    with conn.transaction():
        rest = prune_jobs(conn, JobStatus.CANCELLED, WEEK, limit=10)
    assert (first + rest).jobs == before.jobs
    assert (first + rest).events == before.events
    assert count("jobs") == 0


def test_a_pruned_job_frees_its_idempotency_key(autocommit_conn: Conn) -> None:
    conn = autocommit_conn
    first = runledger.enqueue(conn, "ret.key", idempotency_key="order-1")
    runledger.cancel_job(conn, first)
    assert runledger.enqueue(conn, "ret.key", idempotency_key="order-1") == first
    age(conn, "jobs", [first], days=8)
    with conn.transaction():
        assert prune_jobs(conn, JobStatus.CANCELLED, WEEK).jobs == 1

    again = runledger.enqueue(conn, "ret.key", idempotency_key="order-1")
    assert again != first
    assert runledger.get_job(conn, again).status is JobStatus.QUEUED


def test_another_pruner_holding_the_lock_makes_a_batch_do_nothing(
    autocommit_conn: Conn, observer: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    job = runledger.enqueue(conn, "ret.x")
    runledger.cancel_job(conn, job)
    age(conn, "jobs", [job], days=8)
    with observer.transaction():
        observer.execute("select pg_advisory_xact_lock(%s)", (PRUNE_LOCK_KEY,))
        with conn.transaction():
            pruned = prune_jobs(conn, JobStatus.CANCELLED, WEEK)
            runs = prune_runs(conn, JobStatus.CANCELLED, WEEK)
            swept = sweep_orphan_events(conn, WEEK)
    assert not pruned.locked and not runs.locked and not swept.locked
    assert count("jobs", "id = %s", (job,)) == 1


def test_a_job_another_transaction_holds_is_skipped_not_waited_for(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    held, free = runledger.enqueue(conn, "ret.x"), runledger.enqueue(conn, "ret.x")
    for job in (held, free):
        runledger.cancel_job(conn, job)
    age(conn, "jobs", [held, free], days=8)
    with psycopg.connect(dsn) as other:
        other.execute("select 1 from runledger.jobs where id = %s for update", (held,))
        started = time.monotonic()
        with conn.transaction():
            pruned = prune_jobs(conn, JobStatus.CANCELLED, WEEK)
        assert time.monotonic() - started < 5
        other.rollback()
    assert pruned.jobs == 1
    assert count("jobs", "id = %s", (held,)) == 1


def approval(conn: Conn) -> uuid.UUID:
    return runledger.enqueue_workflow(
        conn,
        WorkflowBuilder("ret.approval")
        .step("prepare", job="ret.ok")
        .step("approve", external=True, after="prepare")
        .step("ship", job="ret.ok", after="approve")
        .build(),
    )


def test_prune_runs_deletes_old_finished_runs_whole_and_never_an_open_one(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    rejected, waiting = approval(conn), approval(conn)
    run_everything(dsn, conn)  # both runs' "prepare" succeeds; both wait for approval
    runledger.fail_external_step(conn, rejected, "approve", reason="no")
    assert runledger.get_workflow_run(conn, rejected).status == "completed_with_errors"
    age(conn, "workflow_runs", [rejected], days=40)
    # The open run's finished step job is old too: it must stay with its run.
    conn.execute(
        "update runledger.jobs set finished_at = finished_at - interval '40 days' "
        "where workflow_run_id = %s",
        (waiting,),
    )
    run_jobs = count("jobs", "workflow_run_id = %s", (rejected,))
    assert run_jobs == 1

    assert count_prunable(conn, JobStatus.FAILED, WEEK).runs == 1
    with conn.transaction():
        assert prune_jobs(conn, JobStatus.SUCCEEDED, WEEK).jobs == 0  # steps go with runs
        pruned = prune_runs(conn, JobStatus.FAILED, WEEK)

    assert (pruned.runs, pruned.run_jobs, pruned.attempts) == (1, 1, 1)
    for table, column in (
        ("workflow_runs", "id"),
        ("workflow_step_runs", "workflow_run_id"),
        ("workflow_step_deps", "workflow_run_id"),
        ("jobs", "workflow_run_id"),
        ("events", "workflow_run_id"),
    ):
        assert count(table, f"{column} = %s", (rejected,)) == 0, table
        assert count(table, f"{column} = %s", (waiting,)) > 0, table
    assert count("job_attempts") == 1  # the waiting run's


def test_the_sweep_deletes_old_events_whose_job_and_run_are_gone(
    autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    gone, kept = runledger.enqueue(conn, "ret.x"), runledger.enqueue(conn, "ret.x")
    conn.execute("delete from runledger.jobs where id = %s", (gone,))  # by hand
    conn.execute("update runledger.events set occurred_at = occurred_at - interval '8 days'")
    young_gone = runledger.enqueue(conn, "ret.x")  # a young orphan: too young to sweep
    conn.execute("delete from runledger.jobs where id = %s", (young_gone,))

    after, deleted, windows = 0, 0, 0
    for _ in range(10):
        windows += 1
        with conn.transaction():
            swept = sweep_orphan_events(conn, WEEK, after=after, limit=1)
        deleted += swept.deleted
        after = swept.next_after
        if after == 0:
            break
    assert after == 0, "the sweep never came back to the start"
    assert windows == 3  # the old orphan's, the old live job's, then the young one's: done
    assert deleted == 1
    assert count("events", "job_id = %s", (young_gone,)) == 1
    assert count("events", "job_id = %s", (gone,)) == 0
    assert count("events", "job_id = %s", (kept,)) == 1


def test_young_rows_are_never_counted_nor_pruned(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    runledger.enqueue(conn, "ret.ok")
    runledger.enqueue(conn, "ret.bad")
    run_everything(dsn, conn)
    runledger.cancel_job(conn, runledger.enqueue(conn, "ret.x"))
    assert count("jobs", "status in ('succeeded', 'failed', 'cancelled')") == 3

    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        assert count_prunable(conn, status, WEEK).rows == 0, status
        with conn.transaction():
            assert prune_jobs(conn, status, WEEK).jobs == 0, status
    assert count("jobs") == 3


def test_history_tables_with_many_dead_rows_are_vacuumed(dsn: str, autocommit_conn: Conn) -> None:
    conn = autocommit_conn
    conn.execute("alter table runledger.events_s0 set (autovacuum_enabled = false)")
    conn.execute(
        "insert into runledger.events (kind, job_id) "
        "select 'job.enqueued', gen_random_uuid() from generate_series(1, 6000)"
    )
    conn.execute("delete from runledger.events")

    def stat(column: str) -> int:
        row = conn.execute(
            f"select coalesce({column}, 0) from pg_stat_user_tables "  # column: ours, below
            "where schemaname = 'runledger' and relname = 'events_s0'"  # the one segment
        ).fetchone()
        return 0 if row is None else int(row[0])

    deadline = time.monotonic() + 15
    while stat("n_dead_tup") < 6000:  # statistics arrive with a short delay
        assert time.monotonic() < deadline, "the dead rows never showed"
        conn.execute("select pg_sleep(0.05)")
    before = stat("vacuum_count")
    with runledger.Store(dsn) as store:
        assert vacuum_history_if_needed(store) == ["events"]
    deadline = time.monotonic() + 15
    while stat("vacuum_count") == before:
        assert time.monotonic() < deadline, "no VACUUM of events was counted"
        conn.execute("select pg_sleep(0.05)")


def fill_queue(conn: Conn, jobs: int) -> None:
    """``jobs`` queued jobs with their ``job.enqueued`` events, analysed: a queue the pruner
    must not read through to find what it deletes."""
    conn.execute(
        "with q as (insert into runledger.jobs (id, job_type) "
        "select runledger.time_ordered_uuid(), 'ret.later' from generate_series(1, %s) "
        "returning id) "
        "insert into runledger.events (kind, job_id) select 'job.enqueued', id from q",
        (jobs,),
    )
    conn.execute("analyze runledger.jobs, runledger.job_history, runledger.events")
    conn.execute("analyze runledger.job_attempts")


def finished(conn: Conn, jobs: int, days: int) -> None:
    """``jobs`` standalone jobs that succeeded ``days`` days ago, each with an attempt and
    two events."""
    conn.execute(
        """
        with done as (
            insert into runledger.job_history
                (id, job_type, status, attempt, max_attempts, started_at, finished_at)
            select runledger.time_ordered_uuid(), 'ret.ok', 'succeeded', 1, 1,
                   now() - make_interval(days => %(days)s),
                   now() - make_interval(days => %(days)s)
            from generate_series(1, %(jobs)s)
            returning id, finished_at
        ),
        tried as (
            insert into runledger.job_attempts
                (job_id, attempt, worker, lease_token, started_at, finished_at, outcome)
            select id, 1, 'w', gen_random_uuid(), finished_at, finished_at, 'succeeded' from done
        )
        insert into runledger.events (kind, job_id)
        select kind, id from done, unnest(array['job.enqueued', 'job.succeeded']) as kind
        """,
        {"jobs": jobs, "days": days},
    )


def test_prune_jobs_reaches_every_table_through_its_index_whatever_the_queue_holds(
    autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    # A full batch of due jobs beside 15 times as many younger ones, each with an attempt and
    # two events as the runtime leaves them, and a queue: the batch is a fifteenth of every
    # history table, which the pruner must reach by index rather than by reading it all.
    finished(conn, 2_000, days=8)
    finished(conn, 30_000, days=1)
    fill_queue(conn, 50_000)

    with conn.transaction():
        pruned = prune_jobs(conn, JobStatus.SUCCEEDED, WEEK)
        # This transaction's own counts, exact and without the statistics' delay.
        scanned = conn.execute(
            "select relname from pg_stat_xact_user_tables where schemaname = 'runledger' "
            "and relname in ('jobs', 'job_history', 'job_attempts', 'events') and seq_scan > 0"
        ).fetchall()

    assert (pruned.jobs, pruned.attempts, pruned.events) == (2000, 2000, 4000)
    assert scanned == []
    assert count("jobs", "status = 'queued'") == 50_000


def test_prune_jobs_deletes_finished_jobs_still_in_the_hot_table_with_their_attempts(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    moved, left = (runledger.enqueue(conn, "ret.ok", {"n": n}) for n in range(2))
    run_everything(dsn, conn)
    # As a database upgraded from version 5 has them: finished, yet in the hot table.
    conn.execute("select runledger.reopen_jobs(array[%s]::uuid[])", (left,))
    age(conn, "jobs", [moved, left], days=8)

    with conn.transaction():
        pruned = prune_jobs(conn, JobStatus.SUCCEEDED, WEEK)

    assert (pruned.jobs, pruned.attempts, pruned.events) == (2, 2, 6)
    assert count("jobs", "id = any(%s)", ([moved, left],)) == 0
    assert count("job_attempts", "job_id = any(%s)", ([moved, left],)) == 0


def test_a_delete_that_says_it_pruned_the_attempts_leaves_them_to_it(
    dsn: str, autocommit_conn: Conn, count: Counter
) -> None:
    conn = autocommit_conn
    pruned, by_hand = (runledger.enqueue(conn, "ret.ok", {"n": n}) for n in range(2))
    run_everything(dsn, conn)

    with conn.transaction():
        conn.execute("select set_config('runledger.pruning', 'on', true)")
        conn.execute("delete from runledger.job_history where id = %s", (pruned,))
    # The trigger did not look the attempts up again: deleting them was the statement's job.
    assert count("job_attempts", "job_id = %s", (pruned,)) == 1
    with conn.transaction():
        conn.execute("delete from runledger.jobs where id = %s", (by_hand,))
    assert count("job_attempts", "job_id = %s", (by_hand,)) == 0


def test_history_tables_are_not_vacuumed_for_a_few_dead_rows_among_many(
    dsn: str, autocommit_conn: Conn
) -> None:
    conn = autocommit_conn
    conn.execute("alter table runledger.events_s0 set (autovacuum_enabled = false)")
    conn.execute(
        "insert into runledger.events (kind, job_id) "
        "select 'job.enqueued', gen_random_uuid() from generate_series(1, 100000)"
    )
    conn.execute("delete from runledger.events where id <= 7000")

    def dead() -> int:
        conn.execute("select pg_stat_clear_snapshot()")
        row = conn.execute(
            "select n_dead_tup, n_live_tup from pg_stat_user_tables "
            "where schemaname = 'runledger' and relname = 'events_s0'"  # the one segment
        ).fetchone()
        return 0 if row is None or row[1] < 90_000 else int(row[0])

    deadline = time.monotonic() + 15
    while dead() < 7000:  # statistics arrive with a short delay
        assert time.monotonic() < deadline, "the dead rows never showed"
        conn.execute("select pg_sleep(0.05)")
    with runledger.Store(dsn) as store:
        # 7,000 dead beside 93,000 live: above the 5,000 floor, below a tenth of the table.
        assert vacuum_history_if_needed(store) == []
        assert vacuum_history_if_needed(store, fraction=0.05) == ["events"]
