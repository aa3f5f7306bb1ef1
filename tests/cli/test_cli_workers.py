"""``runledger workers`` and ``runledger health`` across processes: a ``runledger worker``
subprocess registers itself, a clean stop removes its row, a SIGKILL leaves a row that shows
as stale until another runtime's reaper deletes it, and a stopped (SIGSTOP) worker fails the
health check until it beats again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from console import Cli, ok, parse_table, refused

import runledger
from runledger.postgres.workers import GONE_AFTER_LEASES, WorkerRecord, list_workers

LEASE_SECONDS = 0.6  # the worker is marked seen every 0.2 s, stale after 0.6 s

APP = """
import runledger

registry = runledger.Registry()


@registry.handler("cli.noop", queue="mail")
def noop(ctx, payload):
    return None
"""

WORKER_OPTIONS = [
    "--app",
    "presence_app:registry",
    "--queues",
    "default,mail",
    "--concurrency",
    "2",
    "--no-listen",
]

StartWorker = Callable[[], subprocess.Popen[str]]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def workers(conn: psycopg.Connection[Any]) -> list[WorkerRecord]:
    return list_workers(conn)


def the_worker(conn: psycopg.Connection[Any], pid: int) -> WorkerRecord | None:
    return next((w for w in workers(conn) if w.pid == pid), None)


@pytest.fixture
def start_worker(dsn: str, tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker()``: a ``runledger worker`` process on the test's database (queues
    default and mail, concurrency 2, a 0.6 s lease, polling); killed at the end if alive."""
    (tmp_path / "presence_app.py").write_text(APP)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    environ.pop("DATABASE_URL", None)
    environ["RUNLEDGER_LEASE_SECONDS"] = str(LEASE_SECONDS)
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "runledger.cli", "worker", "--dsn", dsn, *WORKER_OPTIONS],
            cwd=tmp_path,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            process.communicate(timeout=30)


def registered(conn: psycopg.Connection[Any], process: subprocess.Popen[str]) -> WorkerRecord:
    """Wait for ``process``'s row and return it."""
    wait_until(
        lambda: the_worker(conn, process.pid) is not None or process.poll() is not None,
        timeout=30,
        what="the worker's row",
    )
    assert process.poll() is None, process.communicate()[1]
    found = the_worker(conn, process.pid)
    assert found is not None
    return found


def test_a_running_worker_is_listed_live_and_healthy_and_gone_after_a_clean_stop(
    cli: Cli, start_worker: StartWorker, autocommit_conn: psycopg.Connection[Any]
) -> None:
    process = start_worker()
    worker = registered(autocommit_conn, process)

    [row] = parse_table(ok(cli("workers")))
    assert row["ID"] == worker.id
    assert (row["HOST"], row["PID"]) == (socket.gethostname(), str(process.pid))
    assert (row["VERSION"], row["QUEUES"]) == (runledger.__version__, "default,mail")
    assert (row["CONCURRENCY"], row["HANDLERS"], row["STATE"]) == ("2", "cli.noop", "live")
    assert row["LAST SEEN"].endswith(" ago")

    [listed] = json.loads(ok(cli("workers", "--json")))
    assert listed["id"] == worker.id
    assert listed["pid"] == process.pid
    assert listed["queues"] == ["default", "mail"]
    assert listed["handlers"] == ["cli.noop"]
    assert listed["concurrency"] == 2
    assert listed["lease_seconds"] == LEASE_SECONDS
    assert listed["stale"] is False
    assert {"started_at", "last_seen_at", "last_seen_seconds", "host", "version"} <= set(listed)

    assert ok(cli("health")).startswith(f"ok: worker {worker.id} (host ")
    assert ok(cli("health", "--worker-id", worker.id, "--max-age", "5")).startswith("ok: ")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0

    assert workers(autocommit_conn) == []
    assert ok(cli("workers")) == "no worker is registered\n"
    message = refused(cli("health"))
    assert message == (
        f"runledger: unhealthy: no worker of host {socket.gethostname()} is registered "
        "(none started, or it stopped)\n"
    )
    assert "no worker " + worker.id + " is registered" in refused(
        cli("health", "--worker-id", worker.id)
    )


def test_a_killed_worker_shows_stale_fails_health_and_another_reaper_deletes_it(
    cli: Cli, start_worker: StartWorker, autocommit_conn: psycopg.Connection[Any], dsn: str
) -> None:
    process = start_worker()
    worker = registered(autocommit_conn, process)

    process.kill()
    process.wait(timeout=30)
    wait_until(
        lambda: (w := the_worker(autocommit_conn, process.pid)) is not None and w.stale,
        timeout=10,
        what="the killed worker's row to turn stale",
    )

    [row] = parse_table(ok(cli("workers")))
    assert (row["ID"], row["STATE"]) == (worker.id, "stale")
    [listed] = json.loads(ok(cli("workers", "--json")))
    assert listed["stale"] is True
    # Its process is gone: the host's check fails at once, whatever the age.
    message = refused(cli("health", "--max-age", "3600"))
    assert message.startswith(f"runledger: unhealthy: no worker of host {socket.gethostname()}")
    assert f"pids {process.pid} are not running" in message
    assert message.count("\n") == 1
    # By id (from anywhere), it fails once it is older than --max-age.
    message = refused(cli("health", "--worker-id", worker.id, "--max-age", "0.5"))
    assert message.startswith(f"runledger: unhealthy: worker {worker.id} (host ")
    assert "more than --max-age 0.5s" in message

    # Gone for ten of its leases, it is deleted by the reaper of any runtime.
    wait_until(
        lambda: (
            (w := the_worker(autocommit_conn, process.pid)) is not None
            and w.last_seen_seconds > GONE_AFTER_LEASES * LEASE_SECONDS
        ),
        timeout=30,
        what="the row's age to pass ten leases",
    )
    with runledger.Runtime(dsn, runledger.Registry(), listen=False, reap_interval=0.2) as rt:
        wait_until(
            lambda: [w.id for w in workers(autocommit_conn)] == [rt.worker_id],
            timeout=10,
            what="the other runtime's reaper to delete the killed worker's row",
        )


def test_a_worker_that_stops_beating_fails_health_until_it_beats_again(
    cli: Cli, start_worker: StartWorker, autocommit_conn: psycopg.Connection[Any]
) -> None:
    process = start_worker()
    worker = registered(autocommit_conn, process)

    # Frozen, its process exists but its heartbeat does not run: a hung worker.
    process.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: (
                (w := the_worker(autocommit_conn, process.pid)) is not None
                and w.last_seen_seconds > 1.5
            ),
            timeout=10,
            what="the frozen worker's row to age",
        )
        message = refused(cli("health", "--max-age", "1"))
        assert message.startswith(f"runledger: unhealthy: worker {worker.id} (host ")
        assert "more than --max-age 1s" in message
    finally:
        process.send_signal(signal.SIGCONT)

    wait_until(
        lambda: cli("health", "--max-age", "1").returncode == 0,
        timeout=15,
        what="the worker to be healthy again",
    )


def test_health_refuses_a_max_age_that_is_not_a_positive_number(cli: Cli) -> None:
    for bad in ("0", "-1", "soon", "inf"):
        message = refused(cli.inline("health", "--max-age", bad), code=2)
        assert "--max-age" in message
