"""The runtime's VACUUM of runledger.jobs when dead rows pile up."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import sql

import runledger
from runledger.postgres.maintenance import (
    VACUUM_LOCK_KEY,
    vacuum_history_if_needed,
    vacuum_jobs_if_needed,
)


def _jobs_stat(conn: psycopg.Connection[Any], column: str) -> int:
    query = sql.SQL(
        "select coalesce({}, 0) from pg_stat_user_tables "
        "where schemaname = 'runledger' and relname = 'jobs'"
    ).format(sql.Identifier(column))
    row = conn.execute(query).fetchone()
    return 0 if row is None else int(row[0])


def _wait_for_jobs_stat(conn: psycopg.Connection[Any], column: str, at_least: int) -> None:
    """Statistics reach pg_stat_user_tables with a short delay: poll until they show."""
    deadline = time.monotonic() + 15
    while _jobs_stat(conn, column) < at_least:
        assert time.monotonic() < deadline, f"{column} never reached {at_least}"
        time.sleep(0.1)


def _make_dead_rows(conn: psycopg.Connection[Any], count: int) -> None:
    # The migration's per-table autovacuum would take 1,500 dead rows within seconds and race
    # these tests' own VACUUM; this per-test database's copy of the table goes without it.
    conn.execute("alter table runledger.jobs set (autovacuum_enabled = false)")
    runledger.enqueue_many(conn, [runledger.Job("maint.t") for _ in range(count)])
    conn.execute("update runledger.jobs set priority = 1")  # every row version now dead once
    _wait_for_jobs_stat(conn, "n_dead_tup", count)


def test_jobs_is_vacuumed_once_dead_rows_pass_the_threshold(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    with runledger.Store(dsn) as store:
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is False  # nothing dead yet
        _make_dead_rows(autocommit_conn, 1_500)
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is True
    _wait_for_jobs_stat(autocommit_conn, "vacuum_count", 1)


def test_a_runtime_already_vacuuming_makes_the_others_skip(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    _make_dead_rows(autocommit_conn, 1_500)
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("select pg_advisory_lock(%s)", (VACUUM_LOCK_KEY,))
        with runledger.Store(dsn) as store:
            assert vacuum_jobs_if_needed(store, min_dead=1_000) is False
        other.execute("select pg_advisory_unlock(%s)", (VACUUM_LOCK_KEY,))
        with runledger.Store(dsn) as store:
            assert vacuum_jobs_if_needed(store, min_dead=1_000) is True


def test_dead_rows_beside_a_long_kept_history_are_vacuumed_all_the_same(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    # 1,500 dead rows are 2.5 % of 60,000 finished jobs kept for retention: few beside them,
    # but all at the head of jobs_runnable, where every claim steps over them.
    _make_dead_rows(autocommit_conn, 1_500)
    with autocommit_conn.transaction():
        autocommit_conn.execute(
            "insert into runledger.jobs (id, job_type, status, attempt, finished_at)"
            " select gen_random_uuid(), 'maint.kept', 'succeeded', 1, now()"
            " from generate_series(1, 60000)"
        )
    _wait_for_jobs_stat(autocommit_conn, "n_live_tup", 60_000)
    with runledger.Store(dsn) as store:
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is True


def test_a_bulk_enqueue_is_analyzed_before_its_dead_rows_pass_the_threshold(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    # A VACUUM alone records the new row count without column statistics to go with it, and
    # the claim's plan then sorted every queued job.
    autocommit_conn.execute("alter table runledger.jobs set (autovacuum_enabled = false)")
    runledger.enqueue_many(autocommit_conn, [runledger.Job("maint.t") for _ in range(2_000)])
    _wait_for_jobs_stat(autocommit_conn, "n_mod_since_analyze", 2_000)
    with runledger.Store(dsn) as store:
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is True  # none dead, all new
        _wait_for_jobs_stat(autocommit_conn, "analyze_count", 1)
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is False  # analyzed, none dead


def _make_dead_events(conn: psycopg.Connection[Any], count: int) -> None:
    conn.execute("alter table runledger.events_s0 set (autovacuum_enabled = false)")
    conn.execute(
        "insert into runledger.events (kind, job_id) "
        "select 'job.enqueued', gen_random_uuid() from generate_series(1, %s)",
        (count,),
    )
    conn.execute("delete from runledger.events")
    deadline = time.monotonic() + 15
    while True:  # statistics arrive with a short delay
        conn.execute("select pg_stat_clear_snapshot()")
        row = conn.execute(
            "select n_dead_tup from pg_stat_user_tables "
            "where schemaname = 'runledger' and relname = 'events_s0'"  # the one segment
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        assert time.monotonic() < deadline, "the dead events never showed"
        time.sleep(0.05)


def _wait_until_the_history_vacuum_waits(conn: psycopg.Connection[Any]) -> None:
    """Poll until a VACUUM of the events waits for a table lock (holding its advisory key)."""
    deadline = time.monotonic() + 15
    while not conn.execute(
        "select 1 from pg_stat_activity where wait_event_type = 'Lock' "
        "and query like 'vacuum runledger.events%'"
    ).fetchone():
        assert time.monotonic() < deadline, "the history VACUUM never started"
        time.sleep(0.05)


def test_the_hot_table_is_vacuumed_while_a_pruner_vacuums_the_history(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    # A VACUUM of a large history takes seconds; if the hot table's VACUUM skipped its turn
    # meanwhile, its dead rows would pile up until the next check and grow its heap.
    _make_dead_rows(autocommit_conn, 1_500)
    _make_dead_events(autocommit_conn, 6_000)
    history: list[list[str]] = []
    with psycopg.connect(dsn) as holder, runledger.Store(dsn) as store:
        # The history VACUUM waits for this lock, in the middle of its work.
        holder.execute("lock table runledger.events_s0 in share update exclusive mode")
        pruner = threading.Thread(target=lambda: history.append(vacuum_history_if_needed(store)))
        pruner.start()
        try:
            _wait_until_the_history_vacuum_waits(autocommit_conn)
            assert vacuum_jobs_if_needed(store, min_dead=1_000) is True
        finally:
            holder.rollback()
            pruner.join(timeout=30)
    assert history == [["events"]]


def test_one_runtime_at_a_time_vacuums_the_history(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    _make_dead_events(autocommit_conn, 6_000)
    with psycopg.connect(dsn) as holder, runledger.Store(dsn) as store:
        holder.execute("lock table runledger.events_s0 in share update exclusive mode")
        first = threading.Thread(target=vacuum_history_if_needed, args=(store,))
        first.start()
        try:
            _wait_until_the_history_vacuum_waits(autocommit_conn)
            # In a thread: without the lock this call would wait on the table lock too.
            second: list[list[str]] = []
            other = threading.Thread(target=lambda: second.append(vacuum_history_if_needed(store)))
            other.start()
            other.join(timeout=15)
            assert not other.is_alive(), "the second VACUUM waited instead of skipping"
            assert second == [[]]  # the first one holds the turn
        finally:
            holder.rollback()
            first.join(timeout=30)
