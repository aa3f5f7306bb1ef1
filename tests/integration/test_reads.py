"""Reads: frozen records for jobs, runs, steps, edges and events; typed not-found errors."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import psycopg
import pytest

import runledger
from runledger import EventKind, JobStatus, ReleaseMode, RunStatus, StepKind, StepStatus
from runledger.errors import JobNotFound, WorkflowRunNotFound


def _workflow() -> runledger.Workflow:
    return (
        runledger.WorkflowBuilder("invoice.process")
        .input({"invoice_id": "42"})
        .step("notify", external=True, after="charge")
        .step("charge", job="invoice.charge", after=["fetch"], max_attempts=5)
        .step("fetch", job="invoice.fetch", payload={"source": "erp"})
        .step("report", job="invoice.report", after_terminal="charge")
        .result_step("charge")
        .build()
    )


def test_get_job_returns_a_frozen_job_record_with_enum_status(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = runledger.enqueue(
        conn, "email.send", {"to": "a@b.c"}, queue="mail", priority=3, max_attempts=4
    )

    job = runledger.get_job(conn, job_id)

    assert isinstance(job, runledger.JobRecord)
    assert job.status is JobStatus.QUEUED
    assert (job.id, job.job_type, job.queue, job.payload) == (
        job_id,
        "email.send",
        "mail",
        {"to": "a@b.c"},
    )
    assert (job.priority, job.attempt, job.max_attempts, job.timeout_seconds) == (3, 0, 4, None)
    assert job.lease_token is None
    assert job.finished_at is None
    assert job.workflow_run_id is None
    assert job.run_at.tzinfo is not None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.status = JobStatus.RUNNING  # type: ignore[misc]


def test_get_job_of_an_unknown_id_raises_job_not_found(conn: psycopg.Connection[Any]) -> None:
    missing = uuid.uuid4()

    with pytest.raises(JobNotFound) as raised:
        runledger.get_job(conn, missing)

    assert raised.value.job_id == missing
    assert isinstance(raised.value, LookupError)


def test_get_job_from_another_session_does_not_see_uncommitted_jobs(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any]
) -> None:
    job_id = runledger.enqueue(conn, "t")

    with pytest.raises(JobNotFound):
        runledger.get_job(observer, job_id)
    assert runledger.get_job(conn, job_id).id == job_id


def _commit_jobs(autocommit_conn: psycopg.Connection[Any]) -> dict[str, uuid.UUID]:
    """Five jobs, each committed on its own so that creation order is well defined."""
    specs = {
        "a": ("email.send", "mail"),
        "b": ("email.send", "default"),
        "c": ("report.build", "mail"),
        "d": ("email.send", "mail"),
        "e": ("report.build", "default"),
    }
    return {
        name: runledger.enqueue(autocommit_conn, job_type, queue=queue)
        for name, (job_type, queue) in specs.items()
    }


def test_list_jobs_without_filters_returns_all_jobs_oldest_first(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    ids = _commit_jobs(autocommit_conn)

    jobs = runledger.list_jobs(autocommit_conn)

    assert [j.id for j in jobs] == list(ids.values())
    assert all(isinstance(j, runledger.JobRecord) for j in jobs)


def test_list_jobs_filters_by_queue(autocommit_conn: psycopg.Connection[Any]) -> None:
    ids = _commit_jobs(autocommit_conn)

    jobs = runledger.list_jobs(autocommit_conn, queue="mail")

    assert [j.id for j in jobs] == [ids["a"], ids["c"], ids["d"]]


def test_list_jobs_filters_by_job_type(autocommit_conn: psycopg.Connection[Any]) -> None:
    ids = _commit_jobs(autocommit_conn)

    jobs = runledger.list_jobs(autocommit_conn, job_type="report.build")

    assert [j.id for j in jobs] == [ids["c"], ids["e"]]


def test_list_jobs_combines_filters(autocommit_conn: psycopg.Connection[Any]) -> None:
    ids = _commit_jobs(autocommit_conn)

    jobs = runledger.list_jobs(autocommit_conn, job_type="email.send", queue="mail")

    assert [j.id for j in jobs] == [ids["a"], ids["d"]]


def test_list_jobs_filters_by_status(autocommit_conn: psycopg.Connection[Any]) -> None:
    ids = _commit_jobs(autocommit_conn)
    # No public API finishes a job yet (that is the runtime); set the row as a cancel would.
    autocommit_conn.execute(
        "update runledger.jobs set status = 'cancelled', finished_at = now() where id = any(%s)",
        ([ids["b"], ids["d"]],),
    )

    cancelled = runledger.list_jobs(autocommit_conn, status=JobStatus.CANCELLED)
    queued = runledger.list_jobs(autocommit_conn, status="queued")

    assert [j.id for j in cancelled] == [ids["b"], ids["d"]]
    assert all(j.status is JobStatus.CANCELLED for j in cancelled)
    assert [j.id for j in queued] == [ids["a"], ids["c"], ids["e"]]


def test_list_jobs_with_an_unknown_status_raises_value_error(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(ValueError, match="done"):
        runledger.list_jobs(conn, status="done")


def test_list_jobs_respects_limit_keeping_the_oldest(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    ids = _commit_jobs(autocommit_conn)

    jobs = runledger.list_jobs(autocommit_conn, limit=2)

    assert [j.id for j in jobs] == [ids["a"], ids["b"]]


def test_list_jobs_filters_by_workflow_run(autocommit_conn: psycopg.Connection[Any]) -> None:
    _commit_jobs(autocommit_conn)
    run_id = runledger.enqueue_workflow(autocommit_conn, _workflow())
    runledger.enqueue_workflow(autocommit_conn, _workflow())

    jobs = runledger.list_jobs(autocommit_conn, workflow_run_id=run_id)

    assert [(j.step_key, j.workflow_run_id, j.job_type) for j in jobs] == [
        ("fetch", run_id, "invoice.fetch")
    ]
    assert jobs[0].payload == {"source": "erp"}


def test_get_workflow_run_returns_steps_in_topological_order_and_edges(
    conn: psycopg.Connection[Any],
) -> None:
    run_id = runledger.enqueue_workflow(conn, _workflow())

    run = runledger.get_workflow_run(conn, run_id)

    assert isinstance(run, runledger.WorkflowRunRecord)
    assert (run.id, run.name, run.status, run.input) == (
        run_id,
        "invoice.process",
        RunStatus.RUNNING,
        {"invoice_id": "42"},
    )
    assert (run.result_step, run.result, run.finished_at) == ("charge", None, None)
    assert (run.steps_total, run.steps_open, run.steps_active) == (4, 4, 1)
    assert [s.step_key for s in run.steps] == ["fetch", "charge", "notify", "report"]
    assert all(isinstance(s, runledger.StepRecord) for s in run.steps)
    assert [s.id for s in run.steps] == sorted(s.id for s in run.steps)
    fetch = run.step("fetch")
    assert (fetch.kind, fetch.status, fetch.payload) == (
        StepKind.JOB,
        StepStatus.QUEUED,
        {"source": "erp"},
    )
    assert fetch.job_id is not None
    assert runledger.get_job(conn, fetch.job_id).step_key == "fetch"
    notify = run.step("notify")
    assert (notify.kind, notify.status, notify.job_id) == (
        StepKind.EXTERNAL,
        StepStatus.BLOCKED,
        None,
    )
    assert run.step("charge").max_attempts == 5
    assert {(e.step_key, e.prerequisite_key, e.release_mode) for e in run.edges} == {
        ("charge", "fetch", ReleaseMode.ON_SUCCESS),
        ("notify", "charge", ReleaseMode.ON_SUCCESS),
        ("report", "charge", ReleaseMode.ON_TERMINAL),
    }
    assert all(isinstance(e, runledger.EdgeRecord) for e in run.edges)
    with pytest.raises(KeyError):
        run.step("missing")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        run.status = RunStatus.CANCELLED  # type: ignore[misc]


def test_get_workflow_run_of_an_unknown_id_raises_workflow_run_not_found(
    conn: psycopg.Connection[Any],
) -> None:
    missing = uuid.uuid4()

    with pytest.raises(WorkflowRunNotFound) as raised:
        runledger.get_workflow_run(conn, missing)

    assert raised.value.run_id == missing


def test_list_events_for_a_job_returns_its_events_in_id_order(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = runledger.enqueue(conn, "t")
    other = runledger.enqueue(conn, "t")
    conn.execute(
        "insert into runledger.events (kind, job_id, attempt) values ('job.started', %s, 1)",
        (job_id,),
    )

    events = runledger.list_events(conn, job_id=job_id)

    assert [(e.kind, e.job_id, e.attempt) for e in events] == [
        (EventKind.JOB_ENQUEUED, job_id, None),
        (EventKind.JOB_STARTED, job_id, 1),
    ]
    assert events[0].id < events[1].id
    assert all(isinstance(e, runledger.EventRecord) for e in events)
    assert [e.job_id for e in runledger.list_events(conn, job_id=other)] == [other]


def test_list_events_for_a_run_returns_its_events_in_id_order(
    conn: psycopg.Connection[Any],
) -> None:
    run_id = runledger.enqueue_workflow(conn, _workflow())
    runledger.enqueue_workflow(conn, _workflow())
    runledger.enqueue(conn, "unrelated")

    events = runledger.list_events(conn, run_id=run_id)

    assert [(e.kind, e.step_key) for e in events] == [
        (EventKind.RUN_ENQUEUED, None),
        (EventKind.STEP_QUEUED, "fetch"),
        (EventKind.JOB_ENQUEUED, "fetch"),
    ]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.workflow_run_id == run_id for e in events)
    assert events[0].data == {"name": "invoice.process"}


def test_list_events_respects_limit(conn: psycopg.Connection[Any]) -> None:
    run_id = runledger.enqueue_workflow(conn, _workflow())

    events = runledger.list_events(conn, run_id=run_id, limit=1)

    assert [e.kind for e in events] == [EventKind.RUN_ENQUEUED]


def test_list_events_with_neither_job_nor_run_raises_type_error(
    conn: psycopg.Connection[Any],
) -> None:
    with pytest.raises(TypeError):
        runledger.list_events(conn)


def test_list_attempts_of_a_new_job_is_empty(conn: psycopg.Connection[Any]) -> None:
    job_id = runledger.enqueue(conn, "t")

    assert runledger.list_attempts(conn, job_id) == []
