"""The runtime's pruner: it deletes what its retention policy no longer keeps, logs it, and
leaves the rest (and everything, with retention off) alone."""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

import runledger
from runledger import Retention
from runledger.runtime.pruner import Pruner

DAY = datetime.timedelta(days=1)


def old_and_young(conn: psycopg.Connection[Any]) -> tuple[list[uuid.UUID], uuid.UUID]:
    """Three cancelled jobs that finished ten days ago and one that finished now."""
    old = [runledger.enqueue(conn, "prune.x") for _ in range(3)]
    young = runledger.enqueue(conn, "prune.x")
    for job in [*old, young]:
        runledger.cancel_job(conn, job)
    conn.execute(
        "update runledger.jobs set finished_at = now() - interval '10 days' where id = any(%s)",
        (old,),
    )
    return old, young


def remaining(conn: psycopg.Connection[Any]) -> set[uuid.UUID]:
    return {row[0] for row in conn.execute("select id from runledger.jobs").fetchall()}


def test_a_runtime_prunes_by_its_policy_at_start(
    dsn: str, autocommit_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    old, young = old_and_young(autocommit_conn)
    caplog.set_level(logging.INFO, logger="runledger")
    with runledger.Runtime(
        dsn, runledger.Registry(), listen=False, retention=Retention(cancelled=3 * DAY)
    ) as runtime:
        assert runtime.pruner is not None
        deadline = time.monotonic() + 20
        while remaining(autocommit_conn) != {young}:
            assert time.monotonic() < deadline, "the runtime never pruned the old jobs"
            autocommit_conn.execute("select pg_sleep(0.05)")
    assert runtime.pruner.total.jobs == len(old)
    messages = [r.getMessage() for r in caplog.records]
    assert any("retention: keeps finished jobs and workflow runs succeeded 7d, failed 30d, "
               "cancelled 3d" in m for m in messages)  # fmt: skip
    assert any(m.startswith("pruned 3 jobs and 0 workflow runs") for m in messages)


def test_a_round_stops_at_its_budget_and_the_next_goes_on(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    old, young = old_and_young(autocommit_conn)
    with runledger.Store(dsn) as store:
        pruner = Pruner(store, Retention(cancelled=DAY), budget=0.0)
        assert pruner.prune_once().jobs == 0  # no time for even one batch
        assert remaining(autocommit_conn) == {*old, young}
        pruner.budget = 10.0
        stop = threading.Event()
        assert pruner.prune_once(stop).jobs == 3
        assert remaining(autocommit_conn) == {young}
        stop.set()
        assert pruner.prune_once(stop).rows == 0


def test_retention_off_starts_no_pruner_thread(dsn: str) -> None:
    with runledger.Runtime(dsn, runledger.Registry(), listen=False, retention=None) as runtime:
        names = {thread.name for thread in threading.enumerate()}
        assert "runledger-reaper-0" in names
        assert "runledger-pruner-0" not in names
        assert runtime.pruner is None


def test_a_finished_pass_of_the_orphan_sweep_waits_before_the_next(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    def orphan() -> None:
        autocommit_conn.execute(
            "insert into runledger.events (kind, job_id, occurred_at) "
            "values ('job.enqueued', gen_random_uuid(), now() - interval '10 days')"
        )

    with runledger.Store(dsn) as store:
        pruner = Pruner(store, Retention(cancelled=DAY), vacuum=False)
        orphan()
        assert pruner.prune_once().events == 1  # a pass, to the newest event
        orphan()
        assert pruner.prune_once().events == 0  # within the hour: no new pass
        pruner.sweep_every = 0.0
        assert pruner.prune_once().events == 1
