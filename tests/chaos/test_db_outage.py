"""The database drops every runtime connection (pg_terminate_backend) several times while a
runtime works through a backlog: it logs, reconnects and finishes every job, none lost."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import RetryPolicy

pytestmark = pytest.mark.slow

JOBS = 300
KILL_AT = (60, 130, 200)  # succeeded jobs before each outage

TERMINATE_OTHERS = """
select count(*) filter (where pg_terminate_backend(pid))
from pg_stat_activity
where datname = current_database() and pid <> pg_backend_pid()
"""


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.02)


def test_runtime_reconnects_after_its_connections_are_terminated_and_finishes_every_job(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="runledger")
    runs: dict[int, int] = {}
    runs_lock = threading.Lock()
    registry = runledger.Registry()

    @registry.handler("outage.tick", max_attempts=20, retry=RetryPolicy(base=0.05, jitter=0))
    def tick(ctx: runledger.JobContext, payload: Any) -> Any:
        with runs_lock:
            runs[payload["n"]] = runs.get(payload["n"], 0) + 1
        ctx.cancelled.wait(0.005)
        return payload["n"]

    # The killer's own backend survives pg_terminate_backend (pid <> pg_backend_pid()).
    with psycopg.connect(dsn, autocommit=True) as killer:
        runledger.enqueue_many(
            killer, [runledger.Job("outage.tick", {"n": n}) for n in range(JOBS)]
        )

        def count(status: str) -> int:
            row = killer.execute(
                "select count(*) from runledger.jobs where status = %s", (status,)
            ).fetchone()
            assert row is not None
            return int(row[0])

        terminated: list[int] = []
        with runledger.Runtime(
            dsn,
            registry,
            concurrency=4,
            poll_interval=0.2,
            lease_seconds=3,
            reap_interval=0.2,
            shutdown_timeout=10,
        ) as rt:
            assert rt.listener is not None
            wait_until(rt.listener.connected.is_set, what="the listener to connect")
            for threshold in KILL_AT:
                wait_until(
                    lambda threshold=threshold: count("succeeded") >= threshold,
                    timeout=30,
                    what=f"{threshold} jobs to succeed (the runtime to come back)",
                )
                row = killer.execute(TERMINATE_OTHERS).fetchone()
                assert row is not None
                terminated.append(int(row[0]))
            wait_until(lambda: count("succeeded") == JOBS, timeout=60, what="every job to succeed")
            wait_until(rt.listener.connected.is_set, what="the listener to reconnect")
            dead_loops = [loop.name for loop in rt.loops() if not loop.alive()]

        statuses = dict(
            killer.execute("select status, count(*) from runledger.jobs group by status")
        )
        outputs = killer.execute(
            "select count(*) from runledger.jobs where output = (payload -> 'n')"
        ).fetchone()

    assert all(n >= 1 for n in terminated), terminated
    assert statuses == {"succeeded": JOBS}
    assert outputs == (JOBS,)
    assert sorted(runs) == list(range(JOBS))  # every job ran (some maybe twice: at least once)
    assert dead_loops == []
    assert any(r.name == "runledger.listener" for r in caplog.records), "no reconnect was logged"


def test_stop_during_an_outage_with_a_handler_past_the_deadline_returns_and_stops_every_loop(
    dsn: str,
) -> None:
    started, release = threading.Event(), threading.Event()
    registry = runledger.Registry()

    @registry.handler("stuck")
    def stuck(ctx: runledger.JobContext, payload: Any) -> None:
        started.set()
        release.wait(30)  # ignores ctx.cancelled: still running at the shutdown deadline

    with psycopg.connect(dsn, autocommit=True) as killer:
        runledger.enqueue(killer, "stuck")
        # A long poll, no listener, scheduler or reaper: after the claim nothing touches the
        # pool until stop(), so every pooled connection stop() gets was terminated.
        rt = runledger.Runtime(
            dsn,
            registry,
            concurrency=1,
            poll_interval=30,
            listen=False,
            scheduler=False,
            reaper=False,
            shutdown_timeout=0.3,
        )
        rt.start()
        error: Exception | None = None
        try:
            assert started.wait(10)
            row = killer.execute(TERMINATE_OTHERS).fetchone()
            assert row is not None
            assert row[0] >= 1
            try:
                rt.stop()
            except Exception as err:
                error = err
            alive = [loop.name for loop in rt.loops() if loop.alive()]
        finally:
            release.set()
            # Clean up whatever a failed stop() left behind.
            for loop in rt.loops():
                loop.stop(5)
            rt.pool.stop(timeout=2)
            rt.store.close()

    assert error is None
    assert alive == []
