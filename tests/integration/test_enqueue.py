"""Transactional enqueue: the job exists exactly when the caller's transaction commits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import pq

import runledger

Counter = Callable[..., int]

IDLE = pq.TransactionStatus.IDLE
INTRANS = pq.TransactionStatus.INTRANS


def test_rollback_of_callers_transaction_leaves_no_job_or_event(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    with pytest.raises(RuntimeError, match="abort"), conn.transaction():
        runledger.enqueue(conn, "email.send", {"to": "a@b.c"})
        runledger.enqueue_many(conn, [runledger.Job("email.send", {"n": n}) for n in range(3)])
        raise RuntimeError("abort")

    assert count("jobs") == 0
    assert count("events") == 0


def test_commit_makes_job_visible_as_queued_with_one_enqueued_event(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any]
) -> None:
    with conn.transaction():
        job_id = runledger.enqueue(conn, "email.send", {"to": "a@b.c"})

    assert observer.execute(
        "select status, job_type, payload from runledger.jobs where id = %s", (job_id,)
    ).fetchall() == [("queued", "email.send", {"to": "a@b.c"})]
    assert observer.execute("select kind, job_id from runledger.events order by id").fetchall() == [
        ("job.enqueued", job_id)
    ]


def test_enqueue_on_non_autocommit_connection_leaves_its_transaction_open_and_uncommitted(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    assert conn.info.transaction_status == IDLE

    job_id = runledger.enqueue(conn, "email.send")

    assert conn.info.transaction_status == INTRANS
    assert not conn.closed
    assert count("jobs") == 0
    conn.commit()
    assert count("jobs", "id = %s", (job_id,)) == 1


def test_enqueue_inside_open_transaction_keeps_the_callers_earlier_writes_pending(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    conn.execute("create table public.orders (id int primary key)")
    conn.execute("insert into public.orders values (1)")

    runledger.enqueue(conn, "order.ship", {"order": 1})
    runledger.enqueue_many(conn, [runledger.Job("order.bill", {"order": 1})])

    assert conn.info.transaction_status == INTRANS
    assert count("jobs") == 0
    conn.commit()
    assert count("jobs") == 2
    row = conn.execute("select count(*) from public.orders").fetchone()
    assert row == (1,)


def test_enqueue_on_autocommit_connection_commits_by_itself_and_stays_idle(
    autocommit_conn: psycopg.Connection[Any], count: Counter
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "email.send", {"to": "a@b.c"})

    assert autocommit_conn.info.transaction_status == IDLE
    assert count("jobs", "id = %s", (job_id,)) == 1
    assert count("events", "job_id = %s and kind = 'job.enqueued'", (job_id,)) == 1


def test_enqueue_in_explicit_transaction_of_autocommit_connection_rolls_back_with_it(
    autocommit_conn: psycopg.Connection[Any], count: Counter
) -> None:
    with pytest.raises(RuntimeError, match="abort"), autocommit_conn.transaction():
        runledger.enqueue(autocommit_conn, "email.send")
        assert autocommit_conn.info.transaction_status == INTRANS
        raise RuntimeError("abort")

    assert autocommit_conn.info.transaction_status == IDLE
    assert count("jobs") == 0
    assert count("events") == 0


def test_notify_carries_queue_name_and_arrives_only_after_commit(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"listen {runledger.NOTIFY_CHANNEL}")

        runledger.enqueue(conn, "email.send", queue="mail")
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []

        conn.commit()
        received = list(listener.notifies(timeout=10, stop_after=1))

    assert [(n.channel, n.payload) for n in received] == [(runledger.NOTIFY_CHANNEL, "mail")]


def test_notify_is_never_delivered_when_the_transaction_rolls_back(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"listen {runledger.NOTIFY_CHANNEL}")
        runledger.enqueue(conn, "email.send", queue="mail")
        conn.rollback()
        # A later committed enqueue on another queue proves the listener is live; only its
        # notification may arrive.
        runledger.enqueue(conn, "email.send", queue="after")
        conn.commit()
        received = list(listener.notifies(timeout=10, stop_after=1))
        received += list(listener.notifies(timeout=0.3))

    assert [n.payload for n in received] == ["after"]


def test_enqueue_many_notifies_once_per_distinct_queue(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    jobs = [runledger.Job("t", queue=q) for q in ("a", "b", "a", "b", "a")]
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"listen {runledger.NOTIFY_CHANNEL}")
        runledger.enqueue_many(conn, jobs)
        conn.commit()
        received = list(listener.notifies(timeout=10, stop_after=2))
        received += list(listener.notifies(timeout=0.3))

    assert sorted(n.payload for n in received) == ["a", "b"]


def test_store_transaction_commits_enqueue_and_rolls_it_back_on_error(
    dsn: str, count: Counter
) -> None:
    with runledger.Store(dsn, min_size=1, max_size=2) as store:
        with store.transaction() as conn:
            kept = runledger.enqueue(conn, "email.send")
        with pytest.raises(RuntimeError, match="abort"), store.transaction() as conn:
            runledger.enqueue(conn, "email.send")
            raise RuntimeError("abort")

    assert count("jobs") == 1
    assert count("jobs", "id = %s", (kept,)) == 1
