"""``flask runledger migrate --sql`` and ``--check``: what an upgrade would apply, applying
nothing. (Plain ``flask runledger migrate`` is in test_flask.py.)"""

from __future__ import annotations

import psycopg
import pytest
from click.testing import Result
from flask import Flask

import runledger
from runledger.contrib.flask import Runledger
from runledger.postgres.migrate import BOOTSTRAP, RECORD, header, latest_version, migrations

pytestmark = pytest.mark.db


def _flask(dsn: str, *args: str) -> Result:
    app = Flask("migrate_flags")
    app.config["RUNLEDGER_DATABASE_URL"] = dsn
    Runledger(app)
    return app.test_cli_runner().invoke(args=["runledger", "migrate", *args])


def _install_version_1(dsn: str) -> None:
    """Apply and record migration 1 only, as ``migrate`` records it: an old database."""
    first = migrations()[0]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(BOOTSTRAP)
        conn.execute(first.sql.encode())
        conn.execute(RECORD, {"version": 1, "name": first.name, "checksum": first.checksum})


def _version(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return runledger.schema_version(conn)


def test_sql_prints_the_newer_migrations_of_an_old_database_and_applies_nothing(
    empty_database: str,
) -> None:
    _install_version_1(empty_database)

    result = _flask(empty_database, "--sql")

    assert result.exit_code == 0, result.output
    headers = [
        line for line in result.output.splitlines() if line.startswith("-- runledger migration ")
    ]
    assert headers == [header(m) for m in migrations()[1:]]
    assert migrations()[-1].sql.rstrip() in result.output
    assert _version(empty_database) == 1


def test_sql_on_an_up_to_date_database_says_nothing_is_pending(dsn: str) -> None:
    result = _flask(dsn, "--sql")

    assert result.exit_code == 0, result.output
    assert result.output == (
        f"-- no pending migrations: the runledger schema is at version {latest_version()}\n"
    )


def test_check_on_an_old_database_exits_one_naming_the_pending_versions(
    empty_database: str,
) -> None:
    _install_version_1(empty_database)

    result = _flask(empty_database, "--check")

    assert result.exit_code == 1
    versions = ", ".join(str(m.version) for m in migrations()[1:])
    assert result.output == (
        f"Error: migrations pending: {versions} (schema at version 1); "
        "run `flask runledger migrate`\n"
    )
    assert _version(empty_database) == 1


def test_check_on_a_database_without_the_schema_exits_one_and_creates_nothing(
    empty_database: str,
) -> None:
    result = _flask(empty_database, "--check")

    assert result.exit_code == 1
    assert "(schema not installed)" in result.output
    assert _version(empty_database) is None


def test_check_on_an_up_to_date_database_exits_zero(dsn: str) -> None:
    result = _flask(dsn, "--check")

    assert result.exit_code == 0, result.output
    assert result.output == f"schema at version {latest_version()}; no migrations pending\n"


def test_an_edited_applied_migration_is_refused(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("update runledger.schema_migrations set checksum = 'edited' where version = 1")

    result = _flask(dsn, "--check")

    assert result.exit_code == 1
    assert migrations()[0].name in result.output


def test_sql_and_check_together_are_a_usage_error(dsn: str) -> None:
    result = _flask(dsn, "--sql", "--check")

    assert result.exit_code == 2
    assert "not both" in result.output


def test_migrate_applies_the_queue_limits_config_once(dsn: str) -> None:
    app = Flask("queue_limits")
    app.config["RUNLEDGER_DATABASE_URL"] = dsn
    app.config["RUNLEDGER_QUEUE_LIMITS"] = {"mail": {"concurrency": 5, "rate": 100, "per": 60}}
    Runledger(app)
    runner = app.test_cli_runner()

    first = runner.invoke(args=["runledger", "migrate"])
    again = runner.invoke(args=["runledger", "migrate"])

    assert first.exit_code == 0, first.output
    assert "queue 'mail': concurrency 5, rate 100 per 60 s (RUNLEDGER_QUEUE_LIMITS)" in first.output
    assert "queue 'mail'" not in again.output  # already so: nothing written
    with psycopg.connect(dsn, autocommit=True) as conn:
        settings = runledger.queue_settings(conn, "mail")
        events = runledger.list_events(conn, queue="mail")
    assert (settings.concurrency, settings.rate, settings.per) == (5, 100, 60.0)
    assert [e.data for e in events] == [
        {"concurrency": 5, "rate": 100, "per": 60, "by": "RUNLEDGER_QUEUE_LIMITS"}
    ]


def test_an_invalid_queue_limits_config_is_refused_naming_it(dsn: str) -> None:
    from runledger.errors import ConfigError

    app = Flask("queue_limits_bad")
    app.config["RUNLEDGER_DATABASE_URL"] = dsn
    app.config["RUNLEDGER_QUEUE_LIMITS"] = ["mail"]
    with pytest.raises(ConfigError, match="RUNLEDGER_QUEUE_LIMITS"):
        Runledger(app).settings()
