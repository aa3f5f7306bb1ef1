"""Idempotent enqueue: same key and request gives the existing id; another request conflicts."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import pq

import runledger
from runledger.errors import IdempotencyConflict

Counter = Callable[..., int]

THREADS = 8


def _workflow(invoice_id: str = "42", key: str = "invoice-42") -> runledger.Workflow:
    return (
        runledger.WorkflowBuilder("invoice.process")
        .idempotency_key(key)
        .input({"invoice_id": invoice_id})
        .step("fetch", job="invoice.fetch", max_attempts=3)
        .step("charge", job="invoice.charge", after="fetch")
        .step("notify", after="charge", external=True)
        .build()
    )


def _all_tables(count: Counter) -> dict[str, int]:
    tables = ("jobs", "events", "workflow_runs", "workflow_step_runs", "workflow_step_deps")
    return {table: count(table) for table in tables}


# --- jobs ---------------------------------------------------------------------------------------


def test_same_key_and_request_returns_the_same_job_and_writes_nothing(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue(conn, "charge", {"amount": 5}, queue="billing", idempotency_key="k")
    conn.commit()
    before = _all_tables(count)

    again = runledger.enqueue(conn, "charge", {"amount": 5}, queue="billing", idempotency_key="k")
    (in_many,) = runledger.enqueue_many(
        conn, [runledger.Job("charge", {"amount": 5}, queue="billing", idempotency_key="k")]
    )
    conn.commit()

    assert again == first
    assert in_many == first
    assert _all_tables(count) == before
    assert before["jobs"] == 1
    assert before["events"] == 1


def test_same_key_and_request_in_the_same_transaction_returns_the_same_job(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue(conn, "charge", {"amount": 5}, idempotency_key="k")
    again = runledger.enqueue(conn, "charge", {"amount": 5}, idempotency_key="k")
    conn.commit()

    assert again == first
    assert count("jobs") == 1
    assert count("events") == 1


def test_a_later_start_time_is_still_the_same_request(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue(conn, "charge", {"amount": 5}, idempotency_key="k", delay=60)
    conn.commit()

    again = runledger.enqueue(conn, "charge", {"amount": 5}, idempotency_key="k", delay=600)
    conn.commit()

    assert again == first
    assert count("jobs") == 1


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"amount": 6}},
        {"queue": "other"},
        {"priority": 5},
        {"max_attempts": 2},
        {"timeout_seconds": 10},
    ],
    ids=["payload", "queue", "priority", "max_attempts", "timeout_seconds"],
)
def test_same_key_with_a_different_request_conflicts_and_keeps_the_transaction_usable(
    conn: psycopg.Connection[Any], count: Counter, change: dict[str, Any]
) -> None:
    first = runledger.enqueue(conn, "charge", {"amount": 5}, idempotency_key="k")
    conn.commit()
    options: dict[str, Any] = {"payload": {"amount": 5}, **change}

    with pytest.raises(IdempotencyConflict) as raised:
        runledger.enqueue(conn, "charge", idempotency_key="k", **options)

    assert raised.value.kind == "job"
    assert raised.value.existing_id == first
    assert raised.value.key == "k"
    assert raised.value.scope == "charge"
    assert conn.info.transaction_status in (pq.TransactionStatus.IDLE, pq.TransactionStatus.INTRANS)
    later = runledger.enqueue(conn, "after.conflict")
    conn.commit()
    assert count("jobs", "id = %s", (later,)) == 1
    assert count("jobs", "job_type = 'charge'") == 1


def test_same_key_with_a_different_job_type_is_a_different_job(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue(conn, "charge", {"amount": 5}, idempotency_key="k")
    other = runledger.enqueue(conn, "refund", {"amount": 5}, idempotency_key="k")
    conn.commit()

    assert other != first
    assert count("jobs", "idempotency_key = 'k'") == 2


def test_idempotent_retry_in_failed_callers_transaction_rolls_back_cleanly(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue(conn, "charge", {"amount": 5}, idempotency_key="k")
    conn.commit()

    with pytest.raises(IdempotencyConflict), conn.transaction():
        runledger.enqueue(conn, "side.effect")
        runledger.enqueue(conn, "charge", {"amount": 6}, idempotency_key="k")

    assert count("jobs") == 1
    assert count("jobs", "id = %s", (first,)) == 1


# --- workflows ----------------------------------------------------------------------------------


def test_same_key_and_workflow_returns_the_same_run_and_writes_nothing(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue_workflow(conn, _workflow())
    conn.commit()
    before = _all_tables(count)

    again = runledger.enqueue_workflow(conn, _workflow())
    conn.commit()

    assert again == first
    assert _all_tables(count) == before
    assert before["workflow_runs"] == 1


def test_same_key_with_a_different_workflow_conflicts_and_keeps_the_transaction_usable(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue_workflow(conn, _workflow(invoice_id="42"))
    conn.commit()
    before = _all_tables(count)

    with pytest.raises(IdempotencyConflict) as raised:
        runledger.enqueue_workflow(conn, _workflow(invoice_id="43"))

    assert raised.value.kind == "workflow"
    assert raised.value.existing_id == first
    assert raised.value.scope == "invoice.process"
    assert raised.value.key == "invoice-42"
    assert conn.info.transaction_status != pq.TransactionStatus.INERROR
    runledger.enqueue(conn, "after.conflict")
    conn.commit()
    assert count("workflow_runs") == before["workflow_runs"]
    assert count("jobs") == before["jobs"] + 1


def test_same_key_under_another_workflow_name_is_another_run(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue_workflow(conn, _workflow())
    other = runledger.enqueue_workflow(
        conn,
        runledger.WorkflowBuilder("refund.process")
        .idempotency_key("invoice-42")
        .step("refund", job="refund")
        .build(),
    )
    conn.commit()

    assert other != first
    assert count("workflow_runs") == 2


# --- concurrency --------------------------------------------------------------------------------


def _race(dsn: str, action: Callable[[psycopg.Connection[Any]], uuid.UUID]) -> list[uuid.UUID]:
    """Run ``action`` in THREADS threads, each on its own autocommit connection, all at once."""
    connections = [psycopg.connect(dsn, autocommit=True) for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)

    def run(connection: psycopg.Connection[Any]) -> uuid.UUID:
        barrier.wait(timeout=30)
        return action(connection)

    try:
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            futures = [pool.submit(run, c) for c in connections]
            return [f.result(timeout=60) for f in futures]
    finally:
        for connection in connections:
            connection.close()


def test_eight_threads_enqueueing_the_same_keyed_job_make_one_row_and_no_error(
    dsn: str, count: Counter
) -> None:
    ids = _race(
        dsn,
        lambda c: runledger.enqueue(c, "charge", {"amount": 5}, idempotency_key="race"),
    )

    assert len(ids) == THREADS
    assert len(set(ids)) == 1
    assert count("jobs") == 1
    assert count("jobs", "id = %s", (ids[0],)) == 1
    assert count("events") == 1


def test_eight_threads_enqueueing_the_same_keyed_workflow_make_one_run_and_no_error(
    dsn: str, count: Counter
) -> None:
    ids = _race(dsn, lambda c: runledger.enqueue_workflow(c, _workflow()))

    assert len(ids) == THREADS
    assert len(set(ids)) == 1
    assert count("workflow_runs") == 1
    assert count("workflow_runs", "id = %s", (ids[0],)) == 1
    assert count("workflow_step_runs") == 3
    assert count("jobs") == 1


def test_duplicate_key_and_request_within_one_call_gives_one_job(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    ids = runledger.enqueue_many(
        conn,
        [
            runledger.Job("charge", {"a": 1, "b": 2}, idempotency_key="k"),
            runledger.Job("other"),
            runledger.Job("charge", {"b": 2, "a": 1}, idempotency_key="k"),
        ],
    )
    conn.commit()

    assert ids[0] == ids[2]
    assert ids[1] != ids[0]
    assert count("jobs") == 2
    assert count("events") == 2


def test_payload_key_order_does_not_make_a_different_request(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    first = runledger.enqueue(
        conn, "charge", {"a": 1, "b": [1, {"x": 1, "y": 2}]}, idempotency_key="k"
    )
    again = runledger.enqueue(
        conn, "charge", {"b": [1, {"y": 2, "x": 1}], "a": 1}, idempotency_key="k"
    )
    conn.commit()

    assert again == first
    assert count("jobs") == 1


def test_two_enqueue_many_calls_with_the_same_keys_in_opposite_orders_do_not_deadlock(
    dsn: str, count: Counter
) -> None:
    keys = [f"k{n:02}" for n in range(20)]
    middle = keys[10]

    def jobs(order: list[str]) -> list[runledger.Job]:
        return [runledger.Job("charge", {"key": k}, idempotency_key=k) for k in order]

    holder = psycopg.connect(dsn)
    watcher = psycopg.connect(dsn, autocommit=True)
    callers = [psycopg.connect(dsn, autocommit=True) for _ in range(2)]
    try:
        # The holder's uncommitted middle key stops both calls half-way, each having inserted
        # its own half; releasing it lets them run into each other's halves.
        runledger.enqueue(holder, "charge", {"key": middle}, idempotency_key=middle)
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(runledger.enqueue_many, callers[0], jobs(keys)),
                pool.submit(runledger.enqueue_many, callers[1], jobs(keys[::-1])),
            ]
            deadline = time.monotonic() + 30
            while watcher.execute(
                "select count(*) from pg_stat_activity "
                "where datname = current_database() and wait_event_type = 'Lock'"
            ).fetchone() != (2,):
                assert time.monotonic() < deadline, "the calls never waited on the held key"
                assert not any(f.done() for f in futures), [f.result() for f in futures]
            holder.rollback()
            forward, backward = (f.result(timeout=60) for f in futures)
    finally:
        for connection in (holder, watcher, *callers):
            connection.close()

    assert forward == backward[::-1]
    assert count("jobs") == len(keys)
