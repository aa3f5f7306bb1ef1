"""The workers table: registering, refreshing, listing with staleness, and forgetting the
rows of workers gone for good, on the server's clock."""

from __future__ import annotations

from typing import Any

import psycopg

from runledger.postgres.workers import (
    GONE_AFTER_LEASES,
    WorkerInfo,
    delete_gone_workers,
    delete_worker,
    list_workers,
    register_worker,
    touch_worker,
)


def info(worker_id: str = "host-a:12:abcdef", *, lease_seconds: float = 30.0) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="host-a",
        pid=12,
        version="1.2.3",
        queues=["default", "mail"],
        handlers=["email.send", "report.build"],
        concurrency=4,
        lease_seconds=lease_seconds,
    )


def backdate(conn: psycopg.Connection[Any], worker_id: str, seconds: float) -> None:
    conn.execute(
        "update runledger.workers set last_seen_at = now() - make_interval(secs => %s) "
        "where id = %s",
        (seconds, worker_id),
    )


def test_a_registered_worker_is_listed_with_every_field_and_not_stale(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    started = register_worker(autocommit_conn, info())

    [worker] = list_workers(autocommit_conn)

    assert (worker.id, worker.host, worker.pid, worker.version) == (
        "host-a:12:abcdef",
        "host-a",
        12,
        "1.2.3",
    )
    assert worker.queues == ("default", "mail")
    assert worker.handlers == ("email.send", "report.build")
    assert (worker.concurrency, worker.lease_seconds) == (4, 30.0)
    assert worker.started_at == started
    assert worker.last_seen_at >= started
    assert 0 <= worker.last_seen_seconds < 5
    assert worker.stale is False


def test_touch_moves_last_seen_and_says_whether_the_row_exists(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    register_worker(autocommit_conn, info())
    backdate(autocommit_conn, "host-a:12:abcdef", 20)
    [before] = list_workers(autocommit_conn)

    assert touch_worker(autocommit_conn, "host-a:12:abcdef") is True
    [after] = list_workers(autocommit_conn)

    assert before.last_seen_seconds >= 20
    assert after.last_seen_seconds < 5
    assert after.last_seen_at > before.last_seen_at
    assert touch_worker(autocommit_conn, "nobody") is False


def test_a_row_not_seen_for_one_lease_is_stale(autocommit_conn: psycopg.Connection[Any]) -> None:
    register_worker(autocommit_conn, info("fresh", lease_seconds=30))
    register_worker(autocommit_conn, info("quiet", lease_seconds=30))
    backdate(autocommit_conn, "fresh", 25)
    backdate(autocommit_conn, "quiet", 31)

    stale = {w.id: w.stale for w in list_workers(autocommit_conn)}

    assert stale == {"fresh": False, "quiet": True}


def test_registering_again_replaces_the_row_and_keeps_a_given_start(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    started = register_worker(autocommit_conn, info())
    backdate(autocommit_conn, "host-a:12:abcdef", 100)

    again = register_worker(autocommit_conn, info(), started_at=started)

    [worker] = list_workers(autocommit_conn)
    assert again == started == worker.started_at
    assert worker.stale is False


def test_only_rows_gone_for_ten_of_their_own_leases_are_deleted(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    register_worker(autocommit_conn, info("short-lease-gone", lease_seconds=2))
    register_worker(autocommit_conn, info("long-lease-quiet", lease_seconds=30))
    register_worker(autocommit_conn, info("live", lease_seconds=2))
    backdate(autocommit_conn, "short-lease-gone", 2 * GONE_AFTER_LEASES + 1)
    backdate(autocommit_conn, "long-lease-quiet", 2 * GONE_AFTER_LEASES + 1)

    assert delete_gone_workers(autocommit_conn) == ["short-lease-gone"]

    assert sorted(w.id for w in list_workers(autocommit_conn)) == ["live", "long-lease-quiet"]
    assert delete_worker(autocommit_conn, "live") is True
    assert delete_worker(autocommit_conn, "live") is False
