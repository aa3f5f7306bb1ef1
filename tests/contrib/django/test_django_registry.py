"""The project-wide registry: apps' ``jobs.py`` modules are found when Django starts, handlers
keep their functions, and handlers using the ORM in worker threads leave no connection open."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger.contrib import django as rl


def test_installed_apps_jobs_modules_were_imported_when_django_started() -> None:
    assert set(rl.registry.job_types()) >= {
        "django.task",
        "rltest.count_users",
        "rltest.echo",
        "rltest.mail",
    }
    assert [s.name for s in rl.registry.schedules()] == ["rltest-nightly"]
    assert isinstance(rl.registry, runledger.Registry)


def test_the_app_is_installed_under_the_label_runledger() -> None:
    from django.apps import apps

    config = apps.get_app_config("runledger")

    assert config.name == "runledger.contrib.django"
    assert {m.__name__ for m in config.get_models()} == {
        "Job",
        "JobAttempt",
        "Queue",
        "Schedule",
        "WorkflowRun",
        "WorkflowStepRun",
    }


def test_the_decorator_returns_the_function_and_registers_a_wrapper() -> None:
    registry = rl.DjangoRegistry()

    def handler(ctx: Any, payload: Any) -> Any:
        return payload

    assert registry.handler("x.y")(handler) is handler
    registered = registry.get("x.y")
    assert registered is not None
    assert registered.fn is not handler
    assert registered.fn.__wrapped__ is handler  # type: ignore[attr-defined]
    assert registered.fn(None, {"a": 1}) == {"a": 1}
    with pytest.raises(runledger.errors.DuplicateHandler):
        registry.handler("x.y")(handler)


def test_the_django_registry_takes_the_same_handler_options_as_the_core_one() -> None:
    # DjangoRegistry.handler spells out Registry.handler's options; keep them in step.
    ours = inspect.signature(rl.DjangoRegistry.handler)
    core = inspect.signature(runledger.Registry.handler)

    assert list(ours.parameters) == list(core.parameters)
    assert [p.default for p in ours.parameters.values()] == [
        p.default for p in core.parameters.values()
    ]


def test_a_handler_using_the_orm_runs_and_closes_its_threads_connection(
    worker: Callable[..., runledger.Runtime],
    wait_until: Callable[..., None],
    observer: psycopg.Connection[Any],
) -> None:
    from django.contrib.auth.models import User

    def django_sessions() -> int:
        row = observer.execute(
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and application_name = '' and state is not null and pid <> pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return int(row[0])

    User.objects.get_or_create(username="someone")
    job_ids = [rl.enqueue("rltest.count_users") for _ in range(4)]
    runtime = worker()

    def done() -> bool:
        jobs = [runledger.get_job(observer, job_id) for job_id in job_ids]
        return all(job.status == runledger.JobStatus.SUCCEEDED for job in jobs)

    wait_until(done, what="the ORM handlers to succeed")
    assert {runledger.get_job(observer, j).output for j in job_ids} == {User.objects.count()}
    # CONN_MAX_AGE is 0: each handler's Django connection was closed after it returned, so
    # what is left are the runtime's pool, Django's main-thread connection and ours.
    runtime.stop()
    wait_until(
        lambda: django_sessions() <= 1, timeout=5, what="worker threads' connections to close"
    )
