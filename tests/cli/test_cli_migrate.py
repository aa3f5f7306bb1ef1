"""``runledger migrate --sql`` and ``--check``: what an upgrade would apply, without applying it.

Their plain ``migrate`` (apply, already applied, unreachable, no DSN) is in
tests/integration/test_migrate.py.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from console import Cli

import runledger
from runledger.postgres.migrate import BOOTSTRAP, RECORD, latest_version, migrations


def _install_version_1(dsn: str) -> None:
    """Apply and record migration 1 only, as ``migrate`` records it: an old database."""
    first = migrations()[0]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(BOOTSTRAP)
        conn.execute(first.sql.encode())
        conn.execute(RECORD, {"version": 1, "name": first.name, "checksum": first.checksum})


def _schema(dsn: str) -> tuple[bool, int | None]:
    """Whether the runledger schema exists, and its version."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select to_regnamespace('runledger') is not null").fetchone()
        return bool(row and row[0]), runledger.schema_version(conn)


def _headers(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("-- runledger migration ")]


def test_sql_on_an_empty_database_prints_every_migration_and_creates_nothing(
    empty_database: str,
) -> None:
    result = Cli(empty_database)("migrate", "--sql")

    assert result.returncode == 0, result.stderr
    assert _headers(result.stdout) == [
        f"-- runledger migration {m.version}: {m.name}" for m in migrations()
    ]
    for migration in migrations():
        assert (
            f"-- runledger migration {migration.version}: {migration.name}\n"
            f"{migration.sql.rstrip()}\n" in result.stdout
        )
    assert _schema(empty_database) == (False, None)


def test_sql_on_an_old_database_prints_only_the_newer_migrations_and_applies_nothing(
    empty_database: str,
) -> None:
    _install_version_1(empty_database)

    result = Cli(empty_database)("migrate", "--sql")

    assert result.returncode == 0, result.stderr
    assert _headers(result.stdout) == [
        f"-- runledger migration {m.version}: {m.name}" for m in migrations()[1:]
    ]
    assert migrations()[0].sql.rstrip() not in result.stdout
    assert _schema(empty_database) == (True, 1)


def test_sql_on_an_up_to_date_database_says_nothing_is_pending(cli: Cli) -> None:
    result = cli("migrate", "--sql")

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"-- no pending migrations: the runledger schema is at version {latest_version()}\n"
    )


def test_sql_output_runs_as_a_script_and_builds_the_tables_migrate_would(
    empty_database: str, dsn: str
) -> None:
    # What a DBA reviews is what migrate runs, in a form psql could execute.
    script = Cli(empty_database)("migrate", "--sql").stdout
    query = "select tablename from pg_tables where schemaname = 'runledger' order by 1"
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(script.encode())
        built = [row[0] for row in conn.execute(query).fetchall()]
    with psycopg.connect(dsn, autocommit=True) as migrated:
        expected = [row[0] for row in migrated.execute(query).fetchall()]
    # Only migrate records what it applied.
    assert built == [table for table in expected if table != "schema_migrations"]


def test_check_on_an_empty_database_exits_one_naming_every_version(empty_database: str) -> None:
    result = Cli(empty_database)("migrate", "--check")

    assert result.returncode == 1
    assert result.stdout == ""
    versions = ", ".join(str(m.version) for m in migrations())
    assert result.stderr == (
        f"runledger: migrations pending: {versions} (schema not installed); "
        "run `runledger migrate`\n"
    )
    assert _schema(empty_database) == (False, None)


def test_check_on_an_old_database_exits_one_naming_the_newer_versions(
    empty_database: str,
) -> None:
    _install_version_1(empty_database)

    result = Cli(empty_database)("migrate", "--check")

    assert result.returncode == 1
    versions = ", ".join(str(m.version) for m in migrations()[1:])
    assert result.stderr == (
        f"runledger: migrations pending: {versions} (schema at version 1); "
        "run `runledger migrate`\n"
    )
    assert _schema(empty_database) == (True, 1)


def test_check_after_migrate_exits_zero(empty_database: str) -> None:
    cli = Cli(empty_database)
    _install_version_1(empty_database)
    assert cli("migrate").returncode == 0

    result = cli("migrate", "--check")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"schema at version {latest_version()}; no migrations pending\n"
    assert result.stderr == ""


@pytest.mark.parametrize("flag", ["--sql", "--check"])
def test_an_edited_applied_migration_is_refused(
    flag: str, cli: Cli, autocommit_conn: psycopg.Connection[Any]
) -> None:
    autocommit_conn.execute(
        "update runledger.schema_migrations set checksum = 'edited' where version = 1"
    )

    result = cli.inline("migrate", flag)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("runledger: ")
    assert migrations()[0].name in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_sql_and_check_together_are_a_usage_error(cli: Cli) -> None:
    result = cli.inline("migrate", "--sql", "--check")

    assert result.returncode == 2
    assert "not allowed with" in result.stderr


def test_check_with_an_unreachable_database_exits_one_without_traceback(
    empty_database: str,
) -> None:
    missing = psycopg.conninfo.make_conninfo(empty_database, dbname="runledger_no_such_db")

    result = Cli(missing)("migrate", "--check")

    assert result.returncode == 1
    assert "runledger_no_such_db" in result.stderr
    assert "Traceback" not in result.stderr
