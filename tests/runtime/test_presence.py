"""Worker presence: a runtime's ``runledger.workers`` row appears when it starts, its heartbeat
keeps it fresh, it goes at a clean stop, and reapers delete the rows of workers long gone."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger.postgres.workers import GONE_AFTER_LEASES, WorkerInfo, register_worker
from runledger.runtime.presence import runledger_version

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]


def rows(observer: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    with observer.cursor(row_factory=psycopg.rows.dict_row) as cur:
        found = cur.execute("select * from runledger.workers").fetchall()
    return {row["id"]: row for row in found}


def last_seen(observer: psycopg.Connection[Any], worker_id: str) -> Any:
    return rows(observer)[worker_id]["last_seen_at"]


def test_a_started_runtime_has_a_row_with_its_settings_and_a_stopped_one_has_none(
    runtime: RuntimeFactory, observer: psycopg.Connection[Any]
) -> None:
    registry = runledger.Registry()

    @registry.handler("mail.send", queue="mail")
    @registry.handler("report.build")
    def handle(ctx: runledger.JobContext, payload: Any) -> None:
        pass

    rt = runtime(registry, concurrency=3, queues=["default", "mail"], lease_seconds=6.0)

    row = rows(observer)[rt.worker_id]
    assert row["host"] == socket.gethostname()
    assert row["pid"] == os.getpid()
    assert row["version"] == runledger.__version__ == runledger_version()
    assert row["queues"] == ["default", "mail"]
    assert row["handlers"] == ["mail.send", "report.build"]
    assert (row["concurrency"], row["lease_seconds"]) == (3, 6.0)
    assert row["started_at"] <= row["last_seen_at"]

    rt.stop()

    assert rt.worker_id not in rows(observer)


def test_the_worker_named_in_the_attempts_is_the_row_of_the_runtime_that_ran_them(
    runtime: RuntimeFactory,
    observer: psycopg.Connection[Any],
    wait_for_job: Callable[..., runledger.JobRecord],
) -> None:
    registry = runledger.Registry()

    @registry.handler("noop")
    def noop(ctx: runledger.JobContext, payload: Any) -> None:
        pass

    rt = runtime(registry)
    job_id = runledger.enqueue(observer, "noop", {})
    wait_for_job(job_id, "succeeded")

    [attempt] = runledger.list_attempts(observer, job_id)
    assert attempt.worker == rt.worker_id
    assert attempt.worker in rows(observer)


def test_the_heartbeat_moves_last_seen_forward(
    runtime: RuntimeFactory, observer: psycopg.Connection[Any], wait_until: WaitUntil
) -> None:
    # A 0.6 s lease: the heartbeat marks the worker seen every 0.2 s.
    rt = runtime(runledger.Registry(), lease_seconds=0.6)
    first = last_seen(observer, rt.worker_id)

    wait_until(
        lambda: last_seen(observer, rt.worker_id) > first, timeout=5, what="a later last_seen"
    )
    # Again, without any job (no lease to renew): presence does not depend on work.
    second = last_seen(observer, rt.worker_id)
    wait_until(lambda: last_seen(observer, rt.worker_id) > second, timeout=5, what="another beat")


def test_the_heartbeat_puts_back_a_row_deleted_under_it(
    runtime: RuntimeFactory, observer: psycopg.Connection[Any], wait_until: WaitUntil
) -> None:
    rt = runtime(runledger.Registry(), lease_seconds=0.6)
    started = rows(observer)[rt.worker_id]["started_at"]

    observer.execute("delete from runledger.workers where id = %s", (rt.worker_id,))

    wait_until(lambda: rt.worker_id in rows(observer), timeout=5, what="the row back")
    assert rows(observer)[rt.worker_id]["started_at"] == started


def test_a_reaper_deletes_rows_gone_for_ten_leases_and_keeps_merely_stale_ones(
    runtime: RuntimeFactory, observer: psycopg.Connection[Any], wait_until: WaitUntil
) -> None:
    def dead(worker_id: str, lease_seconds: float, unseen_for: float) -> None:
        register_worker(
            observer,
            WorkerInfo(
                id=worker_id,
                host="elsewhere",
                pid=4242,
                version="0.0.1",
                queues=["default"],
                handlers=[],
                concurrency=1,
                lease_seconds=lease_seconds,
            ),
        )
        observer.execute(
            "update runledger.workers set last_seen_at = now() - make_interval(secs => %s) "
            "where id = %s",
            (unseen_for, worker_id),
        )

    dead("gone", 2.0, 2.0 * GONE_AFTER_LEASES + 5)
    dead("stale", 30.0, 60.0)

    rt = runtime(runledger.Registry())  # its reaper forgets gone workers in its first round

    wait_until(lambda: "gone" not in rows(observer), timeout=5, what="the gone row deleted")
    assert set(rows(observer)) == {"stale", rt.worker_id}


def test_a_stop_while_the_database_refuses_the_delete_still_stops(
    runtime: RuntimeFactory, observer: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    rt = runtime(runledger.Registry())
    # The database refuses the delete: the stop logs it and carries on, and the row is left
    # to show as stale until a reaper deletes it.
    observer.execute(
        """
        create function runledger.refuse_delete() returns trigger language plpgsql as $$
        begin raise exception 'no deletes today'; end $$;
        create trigger refuse_delete before delete on runledger.workers
        for each row execute function runledger.refuse_delete();
        """
    )

    rt.stop()

    assert rt.worker_id in rows(observer)
    assert "could not delete the workers row" in caplog.text
