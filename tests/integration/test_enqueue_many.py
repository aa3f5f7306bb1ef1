"""enqueue_many: bulk insert in a handful of statements, all or nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import pq

import runledger
from runledger.errors import IdempotencyConflict

Counter = Callable[..., int]

BULK = 10_000


class CountingCursor(psycopg.Cursor[Any]):
    """Counts every statement sent through a cursor (``conn.execute`` uses one too)."""

    statements = 0

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        type(self).statements += 1
        return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        type(self).statements += 1
        return super().executemany(*args, **kwargs)


def test_ten_thousand_jobs_return_ids_in_input_order_and_write_jobs_and_events(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any], count: Counter
) -> None:
    ids = runledger.enqueue_many(conn, [runledger.Job("bulk", {"n": n}) for n in range(BULK)])
    conn.commit()

    assert len(ids) == BULK
    assert len(set(ids)) == BULK
    stored = dict(
        observer.execute("select id, (payload->>'n')::int from runledger.jobs").fetchall()
    )
    assert [stored[job_id] for job_id in ids] == list(range(BULK))
    assert count("jobs", "status = 'queued'") == BULK
    assert count("events", "kind = 'job.enqueued'") == BULK
    assert count("events", "job_id = any(%s)", (ids,)) == BULK


def test_ten_thousand_jobs_take_at_most_five_statements(dsn: str, count: Counter) -> None:
    class Counting(CountingCursor):
        statements = 0

    jobs = [runledger.Job("bulk", {"n": n}) for n in range(BULK)]
    with psycopg.connect(dsn, cursor_factory=Counting) as conn:
        ids = runledger.enqueue_many(conn, jobs)
        conn.commit()

    assert len(ids) == BULK
    assert count("jobs") == BULK
    assert 1 <= Counting.statements <= 5


def test_empty_iterable_returns_no_ids_and_sends_nothing(conn: psycopg.Connection[Any]) -> None:
    assert runledger.enqueue_many(conn, []) == []
    assert runledger.enqueue_many(conn, iter(())) == []
    assert conn.info.transaction_status == pq.TransactionStatus.IDLE


def test_generator_of_jobs_is_accepted(conn: psycopg.Connection[Any], count: Counter) -> None:
    ids = runledger.enqueue_many(conn, (runledger.Job("t", {"n": n}) for n in range(3)))
    conn.commit()

    assert len(ids) == 3
    assert count("jobs") == 3


def test_non_job_value_raises_type_error_and_writes_nothing(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    with pytest.raises(TypeError):
        runledger.enqueue_many(conn, [runledger.Job("t"), ("t", {})])  # type: ignore[list-item]

    conn.commit()
    assert count("jobs") == 0


def test_on_autocommit_connection_all_jobs_commit_together(
    autocommit_conn: psycopg.Connection[Any], count: Counter
) -> None:
    ids = runledger.enqueue_many(autocommit_conn, [runledger.Job("t", {"n": n}) for n in range(5)])

    assert autocommit_conn.info.transaction_status == pq.TransactionStatus.IDLE
    assert count("jobs", "id = any(%s)", (ids,)) == 5


def test_conflicting_key_writes_none_of_the_calls_jobs_and_keeps_transaction_usable(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    held = runledger.enqueue(conn, "charge", {"amount": 1}, idempotency_key="k")
    conn.commit()

    before = runledger.enqueue(conn, "before.call")
    with pytest.raises(IdempotencyConflict) as raised:
        runledger.enqueue_many(
            conn,
            [
                runledger.Job("in.call", {"n": 1}, idempotency_key="fresh-1"),
                runledger.Job("in.call", {"n": 2}),
                runledger.Job("charge", {"amount": 2}, idempotency_key="k"),
                runledger.Job("in.call", {"n": 3}, idempotency_key="fresh-3"),
            ],
        )
    assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
    in_call = conn.execute("select count(*) from runledger.jobs where job_type = 'in.call'")
    assert in_call.fetchone() == (0,)
    after = runledger.enqueue(conn, "after.call")
    conn.commit()

    assert raised.value.existing_id == held
    assert count("jobs", "job_type = 'in.call'") == 0
    assert count("jobs", "id = any(%s)", ([before, after],)) == 2
    assert count("jobs") == 3
    assert count("events") == 3
