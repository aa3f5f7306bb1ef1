"""Migrations: idempotent, applied once under concurrency, refused cleanly; the console script."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

import runledger
from runledger.errors import MigrationError, SchemaNotMigrated
from runledger.postgres.migrate import MIGRATION_LOCK_KEY, latest_version, migrations

LATEST = 12
ALL = list(range(1, LATEST + 1))


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("RUNLEDGER_DSN", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "runledger.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **env},
    )


def test_shipped_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in migrations()] == ALL
    assert latest_version() == LATEST


def test_migrate_on_a_migrated_database_applies_nothing(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    assert runledger.migrate(autocommit_conn) == []
    assert runledger.migrate(autocommit_conn) == []
    assert runledger.schema_version(autocommit_conn) == LATEST
    row = autocommit_conn.execute("select count(*) from runledger.schema_migrations").fetchone()
    assert row == (LATEST,)


def test_check_schema_passes_on_a_migrated_database(conn: psycopg.Connection[Any]) -> None:
    runledger.check_schema(conn)


def test_migrate_on_an_empty_database_applies_every_version_and_records_it(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert runledger.schema_version(conn) is None

        assert runledger.migrate(conn) == ALL

        assert runledger.schema_version(conn) == LATEST
        runledger.check_schema(conn)
        rows = conn.execute(
            "select version, name, checksum from runledger.schema_migrations"
        ).fetchall()
    assert rows == [(m.version, m.name, m.checksum) for m in migrations()]


def test_migrate_on_a_non_autocommit_connection_commits_each_migration(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database) as conn:
        assert runledger.migrate(conn) == ALL
    with psycopg.connect(empty_database, autocommit=True) as other:
        assert runledger.schema_version(other) == LATEST


def test_two_concurrent_migrators_apply_the_migration_once(empty_database: str) -> None:
    connections = [psycopg.connect(empty_database, autocommit=True) for _ in range(2)]
    barrier = threading.Barrier(2)

    def run(conn: psycopg.Connection[Any]) -> list[int]:
        barrier.wait(timeout=30)
        return runledger.migrate(conn)

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = [f.result(timeout=60) for f in [pool.submit(run, c) for c in connections]]
    finally:
        for conn in connections:
            conn.close()

    # Each version is applied exactly once, by one migrator or the other: between two files
    # the lock is free, and the one that was waiting may take the next file first.
    assert sorted(version for applied in results for version in applied) == ALL
    with psycopg.connect(empty_database, autocommit=True) as conn:
        count = conn.execute("select count(*) from runledger.schema_migrations").fetchone()
        assert count == (LATEST,)
        assert runledger.schema_version(conn) == LATEST


def test_migrators_waiting_on_the_advisory_lock_apply_the_migration_once(
    empty_database: str,
) -> None:
    holder = psycopg.connect(empty_database)
    watcher = psycopg.connect(empty_database, autocommit=True)
    connections = [psycopg.connect(empty_database, autocommit=True) for _ in range(2)]
    try:
        holder.execute("select pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(runledger.migrate, c) for c in connections]
            # Both migrators are inside migrate(), queued on the lock, before either can act.
            deadline = time.monotonic() + 30
            while watcher.execute(
                "select count(*) from pg_stat_activity "
                "where datname = current_database() and wait_event = 'advisory'"
            ).fetchone() != (2,):
                assert time.monotonic() < deadline, "the migrators never waited on the lock"
                assert not any(f.done() for f in futures), [f.result() for f in futures]
            holder.rollback()
            results = [f.result(timeout=60) for f in futures]
        count = watcher.execute("select count(*) from runledger.schema_migrations").fetchone()
    finally:
        for conn in (holder, watcher, *connections):
            conn.close()

    # Each version is applied exactly once, by one migrator or the other: between two files
    # the lock is free, and the one that was waiting may take the next file first.
    assert sorted(version for applied in results for version in applied) == ALL
    assert count == (LATEST,)


def test_check_schema_on_an_empty_database_raises_schema_not_migrated(
    empty_database: str,
) -> None:
    with (
        psycopg.connect(empty_database, autocommit=True) as conn,
        pytest.raises(SchemaNotMigrated) as raised,
    ):
        runledger.check_schema(conn)

    assert (raised.value.found, raised.value.expected) == (None, LATEST)


def test_cli_migrate_applies_then_reports_already_migrated(empty_database: str) -> None:
    first = _cli("migrate", "--dsn", empty_database)
    second = _cli("migrate", "--dsn", empty_database)

    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "already" in second.stdout
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert runledger.schema_version(conn) == LATEST


def test_cli_migrate_with_an_unreachable_database_exits_one_without_traceback(
    empty_database: str,
) -> None:
    missing = psycopg.conninfo.make_conninfo(empty_database, dbname="runledger_no_such_db")

    result = _cli("migrate", "--dsn", missing)

    assert result.returncode == 1
    assert "runledger:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "runledger_no_such_db" in result.stderr


def test_cli_migrate_with_a_malformed_dsn_exits_one_without_traceback() -> None:
    result = _cli("migrate", "--dsn", "not a dsn")

    assert result.returncode == 1
    assert "runledger:" in result.stderr
    assert "Traceback" not in result.stderr


def test_edited_applied_migration_raises_migration_error(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    autocommit_conn.execute("update runledger.schema_migrations set checksum = 'edited'")

    with pytest.raises(MigrationError) as raised:
        runledger.migrate(autocommit_conn)

    shipped = migrations()[0]
    assert (raised.value.version, raised.value.name) == (1, shipped.name)


def test_failing_migration_raises_migration_error_and_records_nothing(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        # A table in the way makes 0001's "create table runledger.workflow_runs" fail.
        conn.execute("create schema runledger")
        conn.execute("create table runledger.workflow_runs (id int)")

        with pytest.raises(MigrationError) as raised:
            runledger.migrate(conn)

        assert raised.value.version == 1
        assert isinstance(raised.value.__cause__, psycopg.errors.DuplicateTable)
        assert runledger.schema_version(conn) is None
        assert conn.execute("select to_regclass('runledger.jobs')").fetchone() == (None,)


def test_cli_migrate_reads_the_dsn_from_runledger_dsn(empty_database: str) -> None:
    result = _cli("migrate", RUNLEDGER_DSN=empty_database)

    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout


def test_cli_migrate_without_any_dsn_exits_with_a_message_and_no_traceback() -> None:
    result = _cli("migrate")

    assert result.returncode != 0
    assert "--dsn" in result.stderr
    assert "Traceback" not in result.stderr
