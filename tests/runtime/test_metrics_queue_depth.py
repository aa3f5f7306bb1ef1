"""The queue depth in the metrics is read by one runtime of a database at a time: the one whose
``runledger.workers`` row is the oldest live one. The others export no depth series, and when
the reader stops another takes over within a heartbeat."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg

import runledger
from runledger.postgres.workers import WorkerInfo, register_worker, touch_worker_ranked
from tests.runtime.conftest import RuntimeFactory, WaitUntil


def depth(rt: runledger.Runtime) -> float | None:
    """The depth series of queue ``elsewhere`` that ``rt``'s metrics export, if any."""
    assert rt.metrics is not None
    registry = rt.metrics.registry
    return registry.get_sample_value(
        "runledger_queue_jobs", {"queue": "elsewhere", "status": "queued"}
    )


def oldest_due(rt: runledger.Runtime) -> float | None:
    assert rt.metrics is not None
    registry = rt.metrics.registry
    return registry.get_sample_value("runledger_queue_oldest_due_seconds", {"queue": "elsewhere"})


def last_seen(observer: psycopg.Connection[Any], worker_id: str) -> Any:
    row = observer.execute(
        "select last_seen_at from runledger.workers where id = %s", (worker_id,)
    ).fetchone()
    assert row is not None
    return row[0]


def test_one_runtime_reads_the_depth_and_another_takes_over_when_it_stops(
    runtime: RuntimeFactory, observer: psycopg.Connection[Any], wait_until: WaitUntil
) -> None:
    runledger.enqueue(observer, "depth.job", queue="elsewhere")  # nobody consumes it
    # 1 s leases: each heartbeat marks its row seen every third of a second.
    first = runtime(runledger.Registry(), metrics_port=0, lease_seconds=1.0)
    second = runtime(runledger.Registry(), metrics_port=0, lease_seconds=1.0)

    wait_until(lambda: depth(first) == 1, what="the oldest runtime to export the depth")
    # The younger one has marked its row seen since (and so been told it is not the oldest).
    seen = last_seen(observer, second.worker_id)
    wait_until(lambda: last_seen(observer, second.worker_id) > seen, what="another beat")
    assert (depth(second), oldest_due(second)) == (None, None)
    assert depth(first) == 1 and oldest_due(first) is not None

    first.stop()

    wait_until(lambda: depth(second) == 1, timeout=5, what="the other runtime to take over")
    assert oldest_due(second) is not None


def worker(worker_id: str, lease_seconds: float = 30.0) -> WorkerInfo:
    return WorkerInfo(id=worker_id, host="h", pid=1, version="0", queues=["default"],
                      handlers=[], concurrency=1, lease_seconds=lease_seconds)  # fmt: skip


def test_the_oldest_live_row_reads_stale_rows_do_not_and_ties_go_to_the_lower_id(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    conn = autocommit_conn
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    register_worker(conn, worker("dead", lease_seconds=2.0), started_at=long_ago)
    conn.execute(
        "update runledger.workers set last_seen_at = now() - interval '3 seconds' where id = 'dead'"
    )  # not seen for more than its lease: stale, whatever its age
    started = long_ago + datetime.timedelta(days=1)
    register_worker(conn, worker("b"), started_at=started)
    register_worker(conn, worker("a"), started_at=started)
    register_worker(conn, worker("young"))

    assert touch_worker_ranked(conn, "a") == (True, True)
    assert touch_worker_ranked(conn, "b") == (True, False)
    assert touch_worker_ranked(conn, "young") == (True, False)
    assert touch_worker_ranked(conn, "gone") == (False, False)

    # A worker's own row counts as live when it touches it, however late that touch is.
    assert touch_worker_ranked(conn, "dead") == (True, True)
