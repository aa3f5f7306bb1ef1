"""The runtime's VACUUM of runledger.jobs when dead rows pile up."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

import runledger
from runledger.postgres.maintenance import VACUUM_LOCK_KEY, vacuum_jobs_if_needed


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
