"""Reviewing and gating an upgrade with Django's own commands: ``manage.py sqlmigrate runledger
NNNN`` prints the runledger SQL its ``InstallSchema`` would apply to that database now, and
``manage.py migrate --check`` exits 1 while runledger's migrations are unapplied. Neither writes
anything."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import runledger
from runledger.postgres.migrate import header, latest_version, migrations


@pytest.fixture
def other(django_project: Any) -> Iterator[str]:
    """The ``other`` database, emptied: no runledger schema, no Django tables."""
    from django.contrib.contenttypes.models import ContentType
    from django.db import connections

    connections["other"].close()
    with psycopg.connect(django_project.other_dsn, autocommit=True) as conn:
        conn.execute("drop schema if exists runledger cascade")
        conn.execute("drop schema public cascade")
        conn.execute("create schema public")
    ContentType.objects.clear_cache()
    yield django_project.other_dsn
    connections["other"].close()
    ContentType.objects.clear_cache()


def call(*args: str, **options: Any) -> str:
    from django.core.management import call_command

    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def schema_version(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return runledger.schema_version(conn)


def headers(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("-- runledger migration ")]


def install_version_1_as_an_earlier_release_did(other: str) -> None:
    """runledger's schema at version 1 and Django's record of 0001_initial, nothing newer."""
    from tests.integration.test_upgrade import install_version

    with psycopg.connect(other, autocommit=True) as conn:
        install_version(conn, 1)
    call("migrate", "runledger", "0001", fake=True, database="other", verbosity=0)


def test_sqlmigrate_on_an_empty_database_prints_every_runledger_migration(other: str) -> None:
    out = call("sqlmigrate", "runledger", "0001", database="other")

    assert "Install or upgrade the runledger schema" in out
    assert "THIS OPERATION CANNOT BE WRITTEN AS SQL" not in out
    assert headers(out) == [header(m) for m in migrations()]
    for migration in migrations():
        assert f"{header(migration)}\n{migration.sql.rstrip()}" in out
    assert schema_version(other) is None


def newest_install_schema_migration() -> str:
    """The newest of runledger's Django migrations that applies SQL (``InstallSchema``): its
    number need not be the SQL migrations' (``0010_queue`` only declares a model)."""
    import importlib
    import pkgutil

    from runledger.contrib.django import migrations as package
    from runledger.contrib.django.operations import InstallSchema

    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name[0].isdigit())
    for name in reversed(names):
        module = importlib.import_module(f"{package.__name__}.{name}")
        if any(isinstance(op, InstallSchema) for op in module.Migration.operations):
            return name
    raise AssertionError("no Django migration applies runledger's SQL")


def test_sqlmigrate_on_an_old_database_prints_the_newer_migrations_and_applies_nothing(
    other: str,
) -> None:
    install_version_1_as_an_earlier_release_did(other)
    newest = newest_install_schema_migration()

    out = call("sqlmigrate", "runledger", newest, database="other")

    assert headers(out) == [header(m) for m in migrations()[1:]]
    assert schema_version(other) == 1


def test_sqlmigrate_on_an_up_to_date_database_says_nothing_is_pending(
    django_project: Any,
) -> None:
    out = call("sqlmigrate", "runledger", "0001")

    assert headers(out) == []
    assert f"-- no pending migrations: the runledger schema is at version {latest_version()}" in out


def test_sqlmigrate_backwards_is_a_no_op(django_project: Any) -> None:
    out = call("sqlmigrate", "runledger", "0001", backwards=True)

    assert "-- (no-op)" in out
    assert headers(out) == []


def test_migrate_check_exits_1_on_an_old_database_and_applies_nothing(other: str) -> None:
    install_version_1_as_an_earlier_release_did(other)

    with pytest.raises(SystemExit) as exited:
        call("migrate", check_unapplied=True, database="other", verbosity=0)

    assert exited.value.code == 1
    assert schema_version(other) == 1


def test_migrate_check_passes_once_migrated(other: str) -> None:
    install_version_1_as_an_earlier_release_did(other)
    call("migrate", database="other", interactive=False, verbosity=0)

    call("migrate", check_unapplied=True, database="other", verbosity=0)

    assert schema_version(other) == latest_version()


def test_migrate_check_as_a_subprocess_on_an_empty_database(
    empty_database: str, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    pending = manage(empty_database, "migrate", "--check")

    assert pending.returncode == 1, pending.stderr
    assert "Traceback" not in pending.stderr
    assert schema_version(empty_database) is None

    assert manage(empty_database, "migrate", "--no-input").returncode == 0
    done = manage(empty_database, "migrate", "--check")
    assert done.returncode == 0, done.stderr
