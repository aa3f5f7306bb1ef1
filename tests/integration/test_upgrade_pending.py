"""``pending``: the migrations an upgrade would apply, read without writing anything."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from test_upgrade import install_version

import runledger
from runledger.errors import MigrationError
from runledger.postgres.migrate import latest_version, migrations, pending


def test_every_migration_is_pending_on_a_database_without_the_schema(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        assert pending(conn) == migrations()
        # Reading created nothing: no schema, no versions table.
        row = conn.execute("select to_regnamespace('runledger')").fetchone()
        assert row == (None,)


def test_only_the_newer_migrations_are_pending_on_an_old_database(empty_database: str) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        install_version(conn, 1)

        assert [m.version for m in pending(conn)] == list(range(2, latest_version() + 1))
        assert runledger.schema_version(conn) == 1

        runledger.migrate(conn)
        assert pending(conn) == ()


def test_pending_reads_inside_the_callers_transaction_and_leaves_it_usable(
    conn: psycopg.Connection[Any],
) -> None:
    with conn.transaction():
        assert pending(conn) == ()
        assert conn.execute("select 1").fetchone() == (1,)


def test_an_edited_applied_migration_raises_migration_error(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    autocommit_conn.execute(
        "update runledger.schema_migrations set checksum = 'edited' where version = 1"
    )

    with pytest.raises(MigrationError) as raised:
        pending(autocommit_conn)

    assert (raised.value.version, raised.value.name) == (1, migrations()[0].name)


def test_a_version_applied_by_a_newer_runledger_is_not_reported(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    autocommit_conn.execute(
        "insert into runledger.schema_migrations (version, name, checksum) "
        "values (%s, 'from_the_future.sql', 'x')",
        (latest_version() + 1,),
    )

    assert pending(autocommit_conn) == ()
