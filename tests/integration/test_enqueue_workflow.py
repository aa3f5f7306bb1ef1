"""enqueue_workflow: run, steps, edges, root jobs and events, in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import pq

import runledger
from runledger.errors import UnknownJobType

Counter = Callable[..., int]


def invoice(invoice_id: str = "42", key: str | None = None) -> runledger.Workflow:
    """The invoice workflow of docs/workflows.md ("Build and enqueue")."""
    return (
        runledger.WorkflowBuilder("invoice.process")
        .idempotency_key(key)
        .input({"invoice_id": invoice_id})
        .step("fetch")
        .job("invoice.fetch")
        .max_attempts(3)
        .timeout_seconds(30)
        .step("validate")
        .after("fetch")
        .job("invoice.validate")
        .step("charge")
        .after("validate")
        .job("invoice.charge")
        .max_attempts(5)
        .timeout_seconds(15)
        .step("notify")
        .after("charge")
        .external()
        .build()
    )


def _steps(conn: psycopg.Connection[Any], run_id: uuid.UUID) -> dict[str, tuple[Any, ...]]:
    rows = conn.execute(
        "select step_key, kind, status, deps_total, deps_pending, job_id "
        "from runledger.workflow_step_runs where workflow_run_id = %s",
        (run_id,),
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_invoice_run_row_is_running_with_four_open_steps_and_one_active(
    conn: psycopg.Connection[Any],
) -> None:
    run_id = runledger.enqueue_workflow(conn, invoice())

    row = conn.execute(
        "select name, status, steps_total, steps_open, steps_active, steps_unsuccessful, input "
        "from runledger.workflow_runs where id = %s",
        (run_id,),
    ).fetchone()
    assert row == ("invoice.process", "running", 4, 4, 1, 0, {"invoice_id": "42"})


def test_invoice_root_step_is_queued_with_its_job_row(conn: psycopg.Connection[Any]) -> None:
    run_id = runledger.enqueue_workflow(conn, invoice())

    kind, status, deps_total, deps_pending, job_id = _steps(conn, run_id)["fetch"]
    assert (kind, status, deps_total, deps_pending) == ("job", "queued", 0, 0)
    assert job_id is not None
    job = conn.execute(
        "select j.job_type, j.status, j.queue, j.priority, j.max_attempts, j.timeout_seconds, "
        "       j.workflow_run_id, j.step_key, j.step_id = s.id, j.payload "
        "from runledger.jobs j join runledger.workflow_step_runs s on s.job_id = j.id "
        "where j.id = %s",
        (job_id,),
    ).fetchone()
    assert job == ("invoice.fetch", "queued", "default", 0, 3, 30, run_id, "fetch", True, {})


def test_invoice_dependent_steps_are_blocked_without_jobs(conn: psycopg.Connection[Any]) -> None:
    run_id = runledger.enqueue_workflow(conn, invoice())

    steps = _steps(conn, run_id)
    assert steps["validate"] == ("job", "blocked", 1, 1, None)
    assert steps["charge"] == ("job", "blocked", 1, 1, None)
    assert steps["notify"] == ("external", "blocked", 1, 1, None)
    jobs = conn.execute(
        "select step_key from runledger.jobs where workflow_run_id = %s", (run_id,)
    ).fetchall()
    assert jobs == [("fetch",)]


def test_invoice_steps_store_their_job_settings(conn: psycopg.Connection[Any]) -> None:
    run_id = runledger.enqueue_workflow(conn, invoice())

    rows = conn.execute(
        "select step_key, job_type, queue, priority, max_attempts, timeout_seconds, payload "
        "from runledger.workflow_step_runs where workflow_run_id = %s order by id",
        (run_id,),
    ).fetchall()
    assert rows == [
        ("fetch", "invoice.fetch", "default", 0, 3, 30, {}),
        ("validate", "invoice.validate", "default", 0, None, None, {}),
        ("charge", "invoice.charge", "default", 0, 5, 15, {}),
        ("notify", None, None, None, None, None, None),
    ]


def test_invoice_edges_are_stored_with_release_on_success(conn: psycopg.Connection[Any]) -> None:
    run_id = runledger.enqueue_workflow(conn, invoice())

    edges = conn.execute(
        "select e.step_key, e.prerequisite_key, e.release_mode, "
        "       s.step_key = e.step_key and p.step_key = e.prerequisite_key "
        "from runledger.workflow_step_deps e "
        "join runledger.workflow_step_runs s on s.id = e.step_id "
        "join runledger.workflow_step_runs p on p.id = e.prerequisite_id "
        "where e.workflow_run_id = %s order by e.step_id",
        (run_id,),
    ).fetchall()
    assert edges == [
        ("validate", "fetch", "on_success", True),
        ("charge", "validate", "on_success", True),
        ("notify", "charge", "on_success", True),
    ]


def test_invoice_events_are_run_enqueued_step_queued_and_job_enqueued(
    conn: psycopg.Connection[Any],
) -> None:
    run_id = runledger.enqueue_workflow(conn, invoice())

    job = conn.execute(
        "select id from runledger.jobs where workflow_run_id = %s", (run_id,)
    ).fetchone()
    assert job is not None
    events = conn.execute(
        "select kind, job_id, workflow_run_id, step_key from runledger.events order by id"
    ).fetchall()
    assert events == [
        ("run.enqueued", None, run_id, None),
        ("step.queued", job[0], run_id, "fetch"),
        ("job.enqueued", job[0], run_id, "fetch"),
    ]


def test_run_whose_only_root_is_external_is_waiting_without_jobs(
    conn: psycopg.Connection[Any],
) -> None:
    workflow = (
        runledger.WorkflowBuilder("approval")
        .step("approve")
        .external()
        .step("ship")
        .after("approve")
        .job("order.ship")
        .build()
    )

    run_id = runledger.enqueue_workflow(conn, workflow)

    run = conn.execute(
        "select status, steps_total, steps_open, steps_active "
        "from runledger.workflow_runs where id = %s",
        (run_id,),
    ).fetchone()
    assert run == ("waiting", 2, 2, 0)
    steps = _steps(conn, run_id)
    assert steps["approve"] == ("external", "waiting", 0, 0, None)
    assert steps["ship"] == ("job", "blocked", 1, 1, None)
    assert conn.execute("select count(*) from runledger.jobs").fetchone() == (0,)
    kinds = conn.execute("select kind, step_key from runledger.events order by id").fetchall()
    assert ("step.waiting", "approve") in kinds
    assert not any(kind == "job.enqueued" for kind, _ in kinds)


def test_every_root_job_step_gets_a_job_and_counts_as_active(
    conn: psycopg.Connection[Any],
) -> None:
    workflow = (
        runledger.WorkflowBuilder("fan")
        .step("a", job="t")
        .step("b", job="t")
        .step("c", job="t")
        .step("join", job="t", after=["a", "b", "c"])
        .build()
    )

    run_id = runledger.enqueue_workflow(conn, workflow)

    run = conn.execute(
        "select status, steps_active from runledger.workflow_runs where id = %s", (run_id,)
    ).fetchone()
    assert run == ("running", 3)
    jobs = conn.execute(
        "select step_key from runledger.jobs where workflow_run_id = %s order by step_key",
        (run_id,),
    ).fetchall()
    assert jobs == [("a",), ("b",), ("c",)]
    assert _steps(conn, run_id)["join"] == ("job", "blocked", 3, 3, None)


def test_after_terminal_edges_are_stored_as_on_terminal(conn: psycopg.Connection[Any]) -> None:
    workflow = (
        runledger.WorkflowBuilder("cleanup")
        .step("work", job="t")
        .step("audit", job="t")
        .step("clean", job="t", after="audit", after_terminal="work")
        .build()
    )

    run_id = runledger.enqueue_workflow(conn, workflow)

    edges = conn.execute(
        "select step_key, prerequisite_key, release_mode from runledger.workflow_step_deps "
        "where workflow_run_id = %s order by prerequisite_key",
        (run_id,),
    ).fetchall()
    assert edges == [("clean", "audit", "on_success"), ("clean", "work", "on_terminal")]


def test_step_ids_increase_in_topological_order_not_insertion_order(
    conn: psycopg.Connection[Any],
) -> None:
    workflow = (
        runledger.WorkflowBuilder("backwards")
        .step("c", job="t", after="b")
        .step("b", job="t", after="a")
        .step("d", job="t", after=["c", "a"])
        .step("a", job="t")
        .build()
    )

    run_id = runledger.enqueue_workflow(conn, workflow)

    rows = conn.execute(
        "select step_key from runledger.workflow_step_runs where workflow_run_id = %s order by id",
        (run_id,),
    ).fetchall()
    assert [r[0] for r in rows] == ["a", "b", "c", "d"]
    bad_edges = conn.execute(
        "select count(*) from runledger.workflow_step_deps "
        "where workflow_run_id = %s and prerequisite_id >= step_id",
        (run_id,),
    ).fetchone()
    assert bad_edges == (0,)


def test_unknown_job_type_with_registry_names_the_step_and_writes_nothing(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    registry = runledger.Registry()
    for job_type in ("invoice.fetch", "invoice.validate"):
        registry.handler(job_type)(lambda ctx, payload: None)

    with pytest.raises(UnknownJobType) as raised:
        runledger.enqueue_workflow(conn, invoice(), registry)

    assert raised.value.job_type == "invoice.charge"
    assert raised.value.step_key == "charge"
    assert raised.value.known == ("invoice.fetch", "invoice.validate")
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE
    conn.commit()
    for table in ("workflow_runs", "workflow_step_runs", "workflow_step_deps", "jobs", "events"):
        assert count(table) == 0


def test_registry_defaults_apply_to_workflow_steps_and_their_jobs(
    conn: psycopg.Connection[Any],
) -> None:
    registry = runledger.Registry()
    registry.handler("t", queue="mail", max_attempts=7, timeout_seconds=9)(lambda c, p: None)
    workflow = (
        runledger.WorkflowBuilder("defaults")
        .step("plain", job="t")
        .step("own", job="t", queue="own", max_attempts=2, timeout_seconds=3)
        .build()
    )

    run_id = runledger.enqueue_workflow(conn, workflow, registry)

    rows = conn.execute(
        "select s.step_key, s.queue, s.max_attempts, s.timeout_seconds, "
        "       j.queue, j.max_attempts, j.timeout_seconds "
        "from runledger.workflow_step_runs s join runledger.jobs j on j.id = s.job_id "
        "where s.workflow_run_id = %s order by s.id",
        (run_id,),
    ).fetchall()
    assert rows == [("plain", "mail", 7, 9, "mail", 7, 9), ("own", "own", 2, 3, "own", 2, 3)]


def test_rollback_leaves_no_run_steps_edges_jobs_or_events(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    with pytest.raises(RuntimeError, match="abort"), conn.transaction():
        runledger.enqueue_workflow(conn, invoice())
        raise RuntimeError("abort")

    for table in ("workflow_runs", "workflow_step_runs", "workflow_step_deps", "jobs", "events"):
        assert count(table) == 0


def test_commit_makes_the_whole_run_visible_to_other_sessions(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    run_id = runledger.enqueue_workflow(conn, invoice())
    assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
    assert count("workflow_runs") == 0

    conn.commit()

    assert count("workflow_runs", "id = %s", (run_id,)) == 1
    assert count("workflow_step_runs", "workflow_run_id = %s", (run_id,)) == 4
    assert count("workflow_step_deps", "workflow_run_id = %s", (run_id,)) == 3
    assert count("jobs", "workflow_run_id = %s", (run_id,)) == 1


def test_on_autocommit_connection_the_run_commits_by_itself(
    autocommit_conn: psycopg.Connection[Any], count: Counter
) -> None:
    run_id = runledger.enqueue_workflow(autocommit_conn, invoice())

    assert autocommit_conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert count("workflow_runs", "id = %s", (run_id,)) == 1
    assert count("jobs", "workflow_run_id = %s", (run_id,)) == 1


def test_root_job_notifies_its_queue_after_commit(conn: psycopg.Connection[Any], dsn: str) -> None:
    workflow = runledger.WorkflowBuilder("one").step("only", job="t", queue="wf").build()
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"listen {runledger.NOTIFY_CHANNEL}")
        runledger.enqueue_workflow(conn, workflow)
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
        conn.commit()
        received = list(listener.notifies(timeout=10, stop_after=1))

    assert [n.payload for n in received] == ["wf"]


def test_plain_dict_is_refused_with_type_error(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(TypeError):
        runledger.enqueue_workflow(conn, {"name": "x"})  # type: ignore[arg-type]
