"""runledger through a real PgBouncer in transaction pooling mode (version 1.18 in CI, without
prepared statements), as docs/operations.md recommends running it: enqueue in the caller's
transaction, a poll-only runtime draining jobs, a workflow run to success and waited for."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import runledger
from runledger.errors import RunNotFinished
from runledger.testing import PgBouncer, TestServer, start_pgbouncer

Admin = Callable[[str], list[dict[str, Any]]]
Connect = Callable[..., psycopg.Connection[Any]]


class Boom(Exception):
    pass


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def dbname(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


def count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def runtime_through(bouncer_dsn: str, registry: runledger.Registry) -> runledger.Runtime:
    """A runtime configured as docs/operations.md says for transaction pooling before 1.21."""
    return runledger.Runtime(
        bouncer_dsn,
        registry,
        concurrency=4,
        listen=False,
        prepare_threshold=None,
        poll_interval=0.1,
        lease_seconds=10,
        reap_interval=0.5,
        shutdown_timeout=5,
    )


def test_the_pool_of_the_test_database_is_in_transaction_mode(
    pgbouncer: PgBouncer, via_bouncer: Connect, admin: Admin, dsn: str
) -> None:
    with via_bouncer(autocommit=True) as conn:
        assert conn.info.port == pgbouncer.port
        conn.execute("select 1")
        pools = [p for p in admin("show pools") if p["database"] == dbname(dsn)]
    assert [p["pool_mode"] for p in pools] == ["transaction"]


def test_enqueue_in_the_callers_transaction_commits_with_it(
    via_bouncer: Connect, autocommit_conn: psycopg.Connection[Any]
) -> None:
    autocommit_conn.execute("create table public.signups (email text not null)")
    conn = via_bouncer()
    with conn.transaction():
        conn.execute("insert into public.signups (email) values (%s)", ["a@example.com"])
        job_id = runledger.enqueue(conn, "email.welcome", {"to": "a@example.com"}, queue="mail")
        # enough statements to be prepared if preparation were on, and a COPY
        for n in range(8):
            runledger.enqueue(conn, "t", {"n": n})
        runledger.enqueue_many(conn, [runledger.Job("t", {"n": n}) for n in range(200)])
        # nothing is visible outside the transaction before its commit
        assert count(autocommit_conn, "select count(*) from runledger.jobs") == 0

    job = runledger.get_job(autocommit_conn, job_id)
    assert job.status is runledger.JobStatus.QUEUED
    assert job.queue == "mail"
    assert count(autocommit_conn, "select count(*) from public.signups") == 1
    assert count(autocommit_conn, "select count(*) from runledger.jobs") == 209


def test_enqueue_in_the_callers_transaction_rolls_back_with_it(
    via_bouncer: Connect, autocommit_conn: psycopg.Connection[Any]
) -> None:
    autocommit_conn.execute("create table public.signups (email text not null)")
    conn = via_bouncer()
    with pytest.raises(Boom), conn.transaction():
        conn.execute("insert into public.signups (email) values (%s)", ["a@example.com"])
        runledger.enqueue(conn, "email.welcome", {"to": "a@example.com"})
        runledger.enqueue_many(conn, [runledger.Job("t", {"n": n}) for n in range(50)])
        raise Boom

    assert count(autocommit_conn, "select count(*) from runledger.jobs") == 0
    assert count(autocommit_conn, "select count(*) from runledger.events") == 0
    assert count(autocommit_conn, "select count(*) from public.signups") == 0
    # the caller's connection goes on working through PgBouncer
    with conn.transaction():
        runledger.enqueue(conn, "t")
    assert count(autocommit_conn, "select count(*) from runledger.jobs") == 1


def test_a_poll_only_runtime_drains_jobs_and_commits_each_effect_once(
    bouncer_dsn: str, admin: Admin, autocommit_conn: psycopg.Connection[Any], dsn: str
) -> None:
    autocommit_conn.execute("create table public.effects (n int not null)")
    registry = runledger.Registry()

    @registry.handler("effect")
    def effect(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.conn.execute("insert into public.effects (n) values (%s)", [payload["n"]])
        return payload["n"]

    @registry.handler("plain")
    def plain(ctx: runledger.JobContext, payload: Any) -> Any:
        return {"doubled": payload["n"] * 2}

    jobs = [runledger.Job("effect", {"n": n}) for n in range(60)]
    jobs += [runledger.Job("plain", {"n": n}) for n in range(60)]
    runledger.enqueue_many(autocommit_conn, jobs)

    with runtime_through(bouncer_dsn, registry):
        wait_until(
            lambda: (
                count(
                    autocommit_conn,
                    "select count(*) from runledger.jobs where status = 'succeeded'",
                )
                == 120
            ),
            timeout=60,
            what="120 jobs to succeed",
        )
        # the runtime's connections are PgBouncer's clients (the server listens on no TCP
        # port of its own but, with RUNLEDGER_TEST_DSN, 5432)
        clients = [c for c in admin("show clients") if c["database"] == dbname(dsn)]
        assert clients

    assert count(autocommit_conn, "select count(*) from runledger.jobs") == 120
    assert count(autocommit_conn, "select count(*) from runledger.job_attempts") == 120
    rows = autocommit_conn.execute("select n from public.effects order by n").fetchall()
    assert [n for (n,) in rows] == list(range(60))


def test_a_workflow_enqueued_and_run_through_pgbouncer_succeeds(
    bouncer_dsn: str, via_bouncer: Connect, autocommit_conn: psycopg.Connection[Any]
) -> None:
    autocommit_conn.execute("create table public.charges (amount numeric not null)")
    registry = runledger.Registry()

    @registry.handler("invoice.fetch")
    def fetch(ctx: runledger.JobContext, payload: Any) -> Any:
        return {"amount": 12}

    @registry.handler("invoice.rate")
    def rate(ctx: runledger.JobContext, payload: Any) -> Any:
        return {"rate": 0.5}

    @registry.handler("invoice.charge")
    def charge(ctx: runledger.JobContext, payload: Any) -> Any:
        amount = ctx.upstream["fetch"]["amount"] * ctx.upstream["rate"]["rate"]  # type: ignore[index, operator]
        ctx.conn.execute("insert into public.charges (amount) values (%s)", [amount])
        return {"charged": amount}

    workflow = (
        runledger.WorkflowBuilder("invoice.process")
        .idempotency_key("invoice-42")
        .input({"invoice_id": "42"})
        .result_step("charge")
        .step("fetch", job="invoice.fetch")
        .step("rate", job="invoice.rate")
        .step("charge", job="invoice.charge", after=["fetch", "rate"])
        .step("notify", job="invoice.fetch", after="charge")
        .build()
    )
    conn = via_bouncer()
    with conn.transaction():
        run_id = runledger.enqueue_workflow(conn, workflow, registry)

    with runtime_through(bouncer_dsn, registry):
        # wait_for_run's LISTEN is lost in transaction mode; its polls still see the end
        run = runledger.wait_for_run(bouncer_dsn, run_id, timeout=60, poll_interval=0.2)

    assert run.status is runledger.RunStatus.SUCCEEDED
    assert run.result == {"charged": 6.0}
    assert {s.step_key: s.status for s in run.steps} == dict.fromkeys(
        ["fetch", "rate", "charge", "notify"], runledger.StepStatus.SUCCEEDED
    )
    assert count(autocommit_conn, "select count(*) from public.charges") == 1


@pytest.fixture
def fresh_backends_dsn(pg_server: TestServer, dsn: str) -> Iterator[str]:
    """The test's database through a PgBouncer of its own that gives every transaction a new
    server connection (``server_lifetime = 0``), as ``server_lifetime`` and
    ``server_idle_timeout`` do now and then in production: nothing may rely on a session."""
    bouncer = start_pgbouncer(pg_server, settings={"server_lifetime": "0"})
    try:
        yield bouncer.dsn_for(dbname(dsn))
    finally:
        bouncer.stop()


def test_a_poll_only_runtime_needs_no_state_kept_on_a_server_connection(
    fresh_backends_dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    registry = runledger.Registry()

    @registry.handler("plain")
    def plain(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload

    runledger.enqueue_many(autocommit_conn, [runledger.Job("plain", {"n": n}) for n in range(40)])
    with runtime_through(fresh_backends_dsn, registry):
        wait_until(
            lambda: (
                count(
                    autocommit_conn,
                    "select count(*) from runledger.jobs where status = 'succeeded'",
                )
                == 40
            ),
            timeout=60,
            what="40 jobs to succeed",
        )


def test_wait_for_run_polls_through_pgbouncer_whatever_backend_each_poll_gets(
    fresh_backends_dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    workflow = runledger.WorkflowBuilder("never.run").step("a", job="nobody.runs.this").build()
    run_id = runledger.enqueue_workflow(autocommit_conn, workflow)
    with pytest.raises(RunNotFinished):
        runledger.wait_for_run(fresh_backends_dsn, run_id, timeout=2, poll_interval=0.05)
