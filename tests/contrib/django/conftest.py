"""Django configured once per session, in-process, on databases of the test server.

Django's settings can be configured once per process, so the session clones one migrated
database for ``default`` (then runs ``migrate`` on it for the admin's tables) and creates an
empty ``other`` database for the migration tests. Every test starts with the runledger tables
of ``default`` empty. Test modules import Django models, admin and tasks inside the tests:
they need the configured app registry, which exists only once the session fixture ran.

Subprocess tests run ``python -m django ... --settings=rltest_project.settings`` with
``DATABASE_URL`` set and this directory on ``PYTHONPATH`` (see ``manage``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import sql

import runledger
from runledger.testing import TemplateDatabases

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

LEDGER_TABLES = (
    "runledger.events",
    "runledger.job_attempts",
    "runledger.jobs",
    "runledger.job_keys",
    "runledger.schedule_ticks",
    "runledger.workflow_step_deps",
    "runledger.workflow_step_runs",
    "runledger.workflow_runs",
    "runledger.schedules",
    "runledger.queues",
)


@attrs.frozen
class Project:
    """The configured test project: the DSNs of its two databases."""

    dsn: str
    other_dsn: str


@pytest.fixture(scope="session")
def django_project(databases: TemplateDatabases) -> Iterator[Project]:
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from rltest_project import settings as module

    if settings.configured:  # pragma: no cover - another plugin configured Django
        pytest.skip("Django was configured before these tests")
    dsn = databases.clone()
    other = f"runledger_django_other_{uuid.uuid4().hex[:8]}"
    admin_dsn = databases.server.dsn
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(other)))
    other_dsn = databases.server.dsn_for(other)
    values = {name: getattr(module, name) for name in dir(module) if name.isupper()}
    values["DATABASES"] = {"default": module.database(dsn), "other": module.database(other_dsn)}
    settings.configure(**values)
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    try:
        yield Project(dsn=dsn, other_dsn=other_dsn)
    finally:
        connections.close_all()
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(other))
            )


@pytest.fixture(autouse=True)
def empty_ledger(django_project: Project) -> None:
    """Every test starts with the runledger tables of ``default`` empty."""
    with psycopg.connect(django_project.dsn, autocommit=True) as conn:
        conn.execute("set lock_timeout = '10s'")
        conn.execute(f"truncate {', '.join(LEDGER_TABLES)}")


@pytest.fixture
def observer(django_project: Project) -> Iterator[psycopg.Connection[Any]]:
    """Another session on ``default`` (autocommit): sees committed rows only."""
    with psycopg.connect(django_project.dsn, autocommit=True) as conn:
        yield conn


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.02)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., None]:
    """``wait_until(predicate, timeout=15.0, what="...")``: poll with a deadline."""
    return wait_until


@pytest.fixture
def worker(django_project: Project) -> Iterator[Callable[..., runledger.Runtime]]:
    """``worker(**options)``: a started Runtime of the project registry on ``default``.

    Poll-only, 0.1 s polls, 2 s leases, concurrency 2; stopped when the test ends.
    """
    from runledger.contrib.django import registry

    built: list[runledger.Runtime] = []

    def start(**options: Any) -> runledger.Runtime:
        settings = {
            "concurrency": 2,
            "poll_interval": 0.1,
            "lease_seconds": 2.0,
            "reap_interval": 0.2,
            "shutdown_timeout": 5.0,
            "listen": False,
            "queues": ["default", "emails", "mail"],
            **options,
        }
        runtime = runledger.Runtime(django_project.dsn, registry, **settings)
        built.append(runtime)
        runtime.start()
        return runtime

    try:
        yield start
    finally:
        for runtime in reversed(built):
            runtime.stop()


def manage_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m django`` subprocess on ``database_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
    env.update(extra)
    return env


def run_manage(
    database_url: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m django ARGS --settings=rltest_project.settings`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings=rltest_project.settings"],
        env=manage_env(database_url),
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_manage(database_url: str, args: Sequence[str]) -> subprocess.Popen[str]:
    """Start ``python -m django ARGS --settings=rltest_project.settings`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args, "--settings=rltest_project.settings"],
        env=manage_env(database_url),
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def manage() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``manage(database_url, *args)``: run a management command of the test project."""
    return run_manage


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``spawn(database_url, [args])``: start a management command in the background; any
    still running when the test ends is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(database_url: str, args: Sequence[str]) -> subprocess.Popen[str]:
        process = spawn_manage(database_url, args)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
