"""``manage.py migrate`` and ``runledger_migrate`` install the schema (idempotently, together
with ``runledger.migrate``); ``runledger_worker`` runs jobs as a real process and exits 0 on
SIGTERM; the DSN the worker builds from ``DATABASES``."""

from __future__ import annotations

import io
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import runledger
from runledger.postgres.migrate import latest_version


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


DJANGO_MIGRATIONS = [
    "0001_initial",
    "0002_handler_started",
    "0003_workers",
    "0004_trace_context",
    "0005_retention",
    "0006_job_history",
    "0007_snooze_progress",
    "0008_unique_retry",
    "0009_flow_control",
    "0010_queue",
    "0011_cheap_prune",
    "0012_queued_keys",
    "0013_event_segments",
]


def schema_version(dsn: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return runledger.schema_version(conn)


def django_applied(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select name from django_migrations where app = 'runledger' order by name"
        ).fetchall()
    return [row[0] for row in rows]


def call(*args: str, **options: Any) -> str:
    from django.core.management import call_command

    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


# --- manage.py migrate --------------------------------------------------------------------


def test_migrate_installs_the_schema_on_an_empty_database_and_is_idempotent(other: str) -> None:
    assert schema_version(other) is None

    call("migrate", database="other", interactive=False, verbosity=0)

    assert schema_version(other) == latest_version()
    assert django_applied(other) == DJANGO_MIGRATIONS
    with psycopg.connect(other, autocommit=True) as conn:
        assert runledger.migrate(conn) == []
        runledger.check_schema(conn)

    # Again, and once more after a rollback of the app's migrations: nothing changes.
    call("migrate", database="other", interactive=False, verbosity=0)
    call("migrate", "runledger", "zero", database="other", interactive=False, verbosity=0)
    assert schema_version(other) == latest_version()  # reversing keeps the ledger
    call("migrate", database="other", interactive=False, verbosity=0)
    assert django_applied(other) == DJANGO_MIGRATIONS


def test_migrate_upgrades_a_schema_installed_by_an_earlier_release(other: str) -> None:
    from tests.integration.test_upgrade import install_version

    with psycopg.connect(other, autocommit=True) as conn:
        install_version(conn, 1)
    call("migrate", "runledger", "0001", fake=True, database="other", verbosity=0)

    call("migrate", database="other", interactive=False, verbosity=0)

    assert schema_version(other) == latest_version()
    assert django_applied(other) == DJANGO_MIGRATIONS


def test_migrate_accepts_a_schema_installed_by_runledger_migrate(other: str) -> None:
    with psycopg.connect(other, autocommit=True) as conn:
        assert runledger.migrate(conn) == list(range(1, latest_version() + 1))

    call("migrate", database="other", interactive=False, verbosity=0)

    assert django_applied(other) == DJANGO_MIGRATIONS
    with psycopg.connect(other, autocommit=True) as conn:
        runledger.check_schema(conn)


def test_the_schema_operation_joins_an_atomic_block_it_runs_in(other: str) -> None:
    from django.db import connections

    from runledger.contrib.django.operations import InstallSchema

    class Boom(Exception):
        pass

    wrapper = connections["other"]
    with pytest.raises(Boom), wrapper.schema_editor(atomic=True) as editor:
        InstallSchema().database_forwards("runledger", editor, None, None)
        raise Boom
    assert schema_version(other) is None  # rolled back with the block

    with wrapper.schema_editor(atomic=True) as editor:
        InstallSchema().database_forwards("runledger", editor, None, None)
    assert schema_version(other) == latest_version()


def test_the_migration_matches_the_models() -> None:
    # makemigrations --check exits 1 when the models need a new migration.
    call("makemigrations", "runledger", check=True, dry_run=True, verbosity=0)


# --- manage.py runledger_migrate ----------------------------------------------------------


def test_runledger_migrate_installs_the_schema_then_has_nothing_to_do(other: str) -> None:
    first = call("runledger_migrate", database="other")

    assert first.strip() == (
        f"Applied runledger migrations {', '.join(map(str, range(1, latest_version() + 1)))}; "
        f"schema at {latest_version()}."
    )
    assert schema_version(other) == latest_version()
    again = call("runledger_migrate", database="other")
    assert again.strip() == f"runledger schema already at version {latest_version()}."
    # Django's migrate afterwards records its migration without complaint.
    call("migrate", database="other", interactive=False, verbosity=0)
    assert django_applied(other) == DJANGO_MIGRATIONS


def test_runledger_migrate_as_a_subprocess(
    empty_database: str, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    done = manage(empty_database, "runledger_migrate")

    assert done.returncode == 0, done.stderr
    assert "Applied runledger migrations" in done.stdout
    assert schema_version(empty_database) == latest_version()


def test_manage_py_migrate_as_a_subprocess_on_an_empty_database(
    empty_database: str, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    done = manage(empty_database, "migrate", "--no-input")

    assert done.returncode == 0, done.stderr
    assert "Applying runledger.0001_initial... OK" in done.stdout
    assert schema_version(empty_database) == latest_version()
    again = manage(empty_database, "migrate", "--no-input")
    assert again.returncode == 0, again.stderr
    assert "No migrations to apply" in again.stdout


# --- manage.py runledger_worker -----------------------------------------------------------


def test_the_worker_command_runs_jobs_and_exits_0_on_sigterm(
    dsn: str,
    spawn: Callable[..., subprocess.Popen[str]],
    wait_until: Callable[..., None],
) -> None:
    from runledger.contrib.django import TASK_JOB_TYPE
    from runledger.contrib.django.backend import TaskCall

    call = TaskCall(task="rltest_app.tasks.add", args=[2, 40], kwargs={}, backend="default")
    with psycopg.connect(dsn, autocommit=True) as conn:
        echo = runledger.enqueue(conn, "rltest.echo", {"hello": "worker"})
        mail = runledger.enqueue(conn, "rltest.mail", {"to": "a@example.com"}, queue="mail")
        task = runledger.enqueue(conn, TASK_JOB_TYPE, call.to_payload())

        process = spawn(dsn, ["runledger_worker", "--concurrency", "2", "--queues", "default,mail"])

        def all_succeeded() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the worker exited early: {process.communicate()}")
            jobs = [runledger.get_job(conn, job_id) for job_id in (echo, mail, task)]
            return all(job.status == runledger.JobStatus.SUCCEEDED for job in jobs)

        wait_until(all_succeeded, timeout=30, what="the worker to run the jobs")
        assert runledger.get_job(conn, echo).output == {"hello": "worker"}
        assert runledger.get_job(conn, mail).output == {"sent": "a@example.com"}
        assert runledger.get_job(conn, task).output == 42

    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    assert "queues default,mail, concurrency 2" in out
    assert "stopped" in out
    assert "Traceback" not in err


def test_the_worker_command_on_a_database_without_the_schema_says_to_migrate(
    empty_database: str, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    done = manage(empty_database, "runledger_worker")

    assert done.returncode == 1
    assert "manage.py migrate" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_worker_command_refuses_a_bad_concurrency_without_a_traceback(
    dsn: str, manage: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    done = manage(dsn, "runledger_worker", "--concurrency", "0")

    assert done.returncode == 1
    assert "--concurrency must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr


# --- the DSN of DATABASES ---------------------------------------------------------------


def test_database_dsn_reaches_the_same_database_as_django(django_project: Any) -> None:
    from runledger.contrib.django import database_dsn

    built = conninfo_to_dict(database_dsn())
    expected = conninfo_to_dict(django_project.dsn)

    for key in ("dbname", "host", "user"):
        assert built.get(key) == expected.get(key), key
    with psycopg.connect(database_dsn(), autocommit=True) as conn:
        runledger.check_schema(conn)


def test_database_dsn_keeps_libpq_options_and_drops_djangos_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import connections

    from runledger.contrib.django import database_dsn

    options = {
        "sslmode": "disable",
        "application_name": "shop-worker",
        "server_side_binding": False,
        "isolation_level": 1,
        "prepare_threshold": 5,
    }
    monkeypatch.setitem(connections["other"].settings_dict, "OPTIONS", options)

    built = conninfo_to_dict(database_dsn("other"))

    assert built["sslmode"] == "disable"
    assert built["application_name"] == "shop-worker"
    assert built["client_encoding"] == "UTF8"
    assert not {"server_side_binding", "isolation_level", "prepare_threshold"} & set(built)


def test_runledger_database_url_wins() -> None:
    from django.test import override_settings

    from runledger.contrib.django import database_dsn

    with override_settings(RUNLEDGER_DATABASE_URL="postgresql://worker@db.internal/shop"):
        assert database_dsn() == "postgresql://worker@db.internal/shop"


# --- settings.RUNLEDGER_QUEUE_LIMITS -------------------------------------------------------


def queue_limits(dsn: str) -> dict[str, tuple[int | None, int | None, float | None]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            s.queue: (s.concurrency, s.rate, s.per) for s in runledger.list_queue_settings(conn)
        }


def limited_events(dsn: str, queue: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [e.data for e in runledger.list_events(conn, queue=queue)]


def test_migrate_applies_the_queue_limits_setting_and_records_only_changes(other: str) -> None:
    from django.test import override_settings

    limits = {"mail": {"concurrency": 5, "rate": 100, "per": 60}, "reports": {"concurrency": 2}}
    with override_settings(RUNLEDGER_QUEUE_LIMITS=limits):
        out = call("migrate", database="other", interactive=False, verbosity=1)
        assert "runledger queue 'mail': concurrency 5, rate 100 per 60 s" in out
        assert queue_limits(other) == {"mail": (5, 100, 60.0), "reports": (2, None, None)}
        # Migrating again with the same setting writes nothing more.
        call("migrate", database="other", interactive=False, verbosity=0)
    assert limited_events(other, "mail") == [
        {"concurrency": 5, "rate": 100, "per": 60, "by": "settings.RUNLEDGER_QUEUE_LIMITS"}
    ]

    # A queue the setting stops naming keeps its limits; one it changes is changed.
    with override_settings(RUNLEDGER_QUEUE_LIMITS={"mail": {"rate": 10}}):
        out = call("runledger_migrate", database="other")
    assert "Queue 'mail': rate 10 per 1 s (RUNLEDGER_QUEUE_LIMITS)." in out
    assert queue_limits(other) == {"mail": (None, 10, 1.0), "reports": (2, None, None)}


def test_an_invalid_queue_limits_setting_fails_the_command_and_writes_nothing(
    other: str,
) -> None:
    from django.core.management import CommandError
    from django.test import override_settings

    call("migrate", database="other", interactive=False, verbosity=0)
    with (
        override_settings(RUNLEDGER_QUEUE_LIMITS={"mail": {"concurrency": 0}}),
        pytest.raises(CommandError, match="concurrency=0"),
    ):
        call("runledger_migrate", database="other")
    with (
        override_settings(RUNLEDGER_QUEUE_LIMITS={"mail": {"burst": 3}}),
        pytest.raises(CommandError, match=r"RUNLEDGER_QUEUE_LIMITS\['mail'\]"),
    ):
        call("runledger_migrate", database="other")
    assert queue_limits(other) == {}
