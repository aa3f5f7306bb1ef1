"""The runtime's VACUUM of runledger.jobs when dead rows pile up."""

from __future__ import annotations

import time
from typing import Any

import psycopg

import runledger
from runledger.postgres.maintenance import VACUUM_LOCK_KEY, vacuum_jobs_if_needed


def _dead_rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "select coalesce(n_dead_tup, 0) from pg_stat_user_tables "
        "where schemaname = 'runledger' and relname = 'jobs'"
    ).fetchone()
    return 0 if row is None else int(row[0])


def _make_dead_rows(conn: psycopg.Connection[Any], count: int) -> None:
    # The migration's per-table autovacuum would take 1,500 dead rows within seconds and race
    # these tests' own VACUUM; this per-test database's copy of the table goes without it.
    conn.execute("alter table runledger.jobs set (autovacuum_enabled = false)")
    runledger.enqueue_many(conn, [runledger.Job("maint.t") for _ in range(count)])
    conn.execute("update runledger.jobs set priority = 1")  # every row version now dead once
    deadline = time.monotonic() + 15
    while _dead_rows(conn) < count:  # statistics reach pg_stat with a short delay
        assert time.monotonic() < deadline, "the dead rows never showed in pg_stat_user_tables"
        time.sleep(0.1)


def test_jobs_is_vacuumed_once_dead_rows_pass_the_threshold(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    with runledger.Store(dsn) as store:
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is False  # nothing dead yet
        _make_dead_rows(autocommit_conn, 1_500)
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is True
    row = autocommit_conn.execute(
        "select vacuum_count from pg_stat_user_tables "
        "where schemaname = 'runledger' and relname = 'jobs'"
    ).fetchone()
    deadline = time.monotonic() + 15
    while row is None or row[0] < 1:
        assert time.monotonic() < deadline, "pg_stat_user_tables never counted the VACUUM"
        time.sleep(0.1)
        row = autocommit_conn.execute(
            "select vacuum_count from pg_stat_user_tables "
            "where schemaname = 'runledger' and relname = 'jobs'"
        ).fetchone()


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
    deadline = time.monotonic() + 15
    while True:  # statistics reach pg_stat with a short delay
        row = autocommit_conn.execute(
            "select n_live_tup from pg_stat_user_tables "
            "where schemaname = 'runledger' and relname = 'jobs'"
        ).fetchone()
        if row is not None and row[0] >= 60_000:
            break
        assert time.monotonic() < deadline, "the kept jobs never showed in pg_stat_user_tables"
        time.sleep(0.1)
    with runledger.Store(dsn) as store:
        assert vacuum_jobs_if_needed(store, min_dead=1_000) is True
