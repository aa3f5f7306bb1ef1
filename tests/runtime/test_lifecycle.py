"""Runtime start/stop edge cases and the handler_context hook."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import runledger
from runledger.errors import SchemaNotMigrated
from runledger.testing import TemplateDatabases


def test_a_start_refused_for_an_unmigrated_schema_leaves_nothing_running_and_can_be_retried(
    databases: TemplateDatabases,
) -> None:
    name = "runledger_lifecycle_empty"
    with psycopg.connect(databases.server.dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name}")
        admin.execute(f"create database {name}")
    dsn = databases.server.dsn_for(name)
    try:
        runtime = runledger.Runtime(dsn, runledger.Registry(), listen=False)
        with pytest.raises(SchemaNotMigrated):
            runtime.start()
        assert not any(t.name.startswith("runledger-") and t.is_alive()
                       for t in threading.enumerate()
                       if not t.name.startswith("runledger-pool"))  # fmt: skip
        with psycopg.connect(dsn, autocommit=True) as conn:
            runledger.migrate(conn)
        runtime.start()  # the same runtime starts once the schema is there
        runtime.stop()
    finally:
        databases.drop(name)


def test_stopping_a_runtime_that_never_started_closes_its_pool(dsn: str) -> None:
    runtime = runledger.Runtime(dsn, runledger.Registry(), listen=False)
    runtime.stop()
    assert runtime.store.pool.closed


def test_handler_context_wraps_every_handler_call_in_its_thread(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    seen: list[tuple[str, bool]] = []
    inside = threading.local()
    done = threading.Event()

    @contextlib.contextmanager
    def app_context() -> Iterator[None]:
        inside.active = True
        try:
            yield
        finally:
            inside.active = False

    registry = runledger.Registry()

    @registry.handler("ctx.check")
    def check(ctx: runledger.JobContext, payload: Any) -> None:
        seen.append((threading.current_thread().name, getattr(inside, "active", False)))
        done.set()

    runledger.enqueue(autocommit_conn, "ctx.check")
    with runledger.Runtime(
        dsn, registry, concurrency=1, poll_interval=0.1, listen=False, handler_context=app_context
    ):
        assert done.wait(10)
    assert seen == [("runledger-worker-0", True)]


def test_a_runtime_on_the_caller_s_pool_hands_its_connections_back_as_it_found_them(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    """The claimer and the completer hold a connection each, in autocommit mode and (with
    LISTEN) with a session-level plan setting: none of that may reach the pool's next user."""
    registry = runledger.Registry()

    @registry.handler("held.echo")
    def echo(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload

    workflow = (
        runledger.WorkflowBuilder("held")
        .input({"n": 2})
        .result_step("b")
        .step("a", job="held.echo")
        .step("b", job="held.echo", after="a")
        .build()
    )
    with ConnectionPool(dsn, min_size=1, max_size=8, kwargs={"autocommit": False}) as pool:
        job_id = runledger.enqueue(autocommit_conn, "held.echo", {"n": 1})
        run_id = runledger.enqueue_workflow(autocommit_conn, workflow, registry)
        with runledger.Runtime(pool, registry, concurrency=1, poll_interval=0.2) as rt:
            # a lone job (one statement) and workflow steps (a transaction) were written
            run = runledger.wait_for_run(rt.store, run_id, timeout=20, poll_interval=0.2)
            assert run.status is runledger.RunStatus.SUCCEEDED
            assert runledger.get_job(autocommit_conn, job_id).status == "succeeded"
        size = pool.get_stats()["pool_size"]
        assert size >= 2
        conns = [pool.getconn() for _ in range(size)]
        try:
            for conn in conns:
                assert not conn.autocommit
                row = conn.execute("select current_setting('plan_cache_mode')").fetchone()
                assert row == ("auto",)
        finally:
            for conn in conns:
                conn.rollback()
                pool.putconn(conn)
