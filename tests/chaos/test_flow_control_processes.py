"""Flow control across three ``runledger worker`` processes: a concurrency key's limit, a
queue's rate limit and a paused queue hold for all of them together (the claim enforces
them in PostgreSQL; no process knows what the others run)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import runledger

pytestmark = pytest.mark.slow

#: Each handler records its interval through ctx.conn, with the database's clock; the row
#: commits with the job's success.
APP = textwrap.dedent(
    """
    import time

    import runledger

    registry = runledger.Registry()

    def _record(ctx, seconds):
        started = ctx.conn.execute("select clock_timestamp()").fetchone()[0]
        time.sleep(seconds)
        ctx.conn.execute(
            "insert into fc_runs (job_id, queue, started, finished)"
            " values (%s, %s, %s, clock_timestamp())",
            (ctx.job_id, ctx.queue, started),
        )

    @registry.handler(
        "fc.keyed", queue="keyed", concurrency_key=lambda p: p["key"], concurrency_limit=2
    )
    def keyed(ctx, payload):
        _record(ctx, 0.05)

    @registry.handler("fc.plain")
    def plain(ctx, payload):
        _record(ctx, 0.005)
    """
)
RUNS_TABLE = """
create table fc_runs (
    job_id uuid primary key, queue text not null, started timestamptz not null,
    finished timestamptz not null)
"""


class Workers:
    """Three ``runledger worker`` processes of ``APP``, stopped with SIGTERM."""

    def __init__(self, dsn: str, directory: Path, queues: str, poll_interval: float) -> None:
        """``queues`` is comma-separated; ``{n}`` in it becomes the worker's number (0..2)."""
        (directory / "fc_app.py").write_text(APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
        env.pop("DATABASE_URL", None)
        env.update(
            PYTHONPATH=os.pathsep.join([str(directory), env.get("PYTHONPATH", "")]),
            RUNLEDGER_DSN=dsn,
            RUNLEDGER_POLL_INTERVAL=str(poll_interval),
            RUNLEDGER_SHUTDOWN_TIMEOUT="10",
        )
        self.logs = [directory / f"worker-{n}.log" for n in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for n, log in enumerate(self.logs):
            with log.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "runledger.cli",
                            "worker",
                            "--app",
                            "fc_app:registry",
                            "--concurrency",
                            "4",
                            "--queues",
                            queues.format(n=n),
                            "--log-level",
                            "warning",
                        ],
                        cwd=directory,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def check(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}:\n{log.read_text()}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def control(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RUNS_TABLE)
        yield conn


def start(dsn: str, tmp_path: Path, queues: str, poll: float = 0.2) -> Workers:
    return Workers(dsn, tmp_path, queues, poll)


def wait_for(workers: Workers, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        workers.check()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def succeeded(conn: psycopg.Connection[Any], queue: str) -> int:
    return int(scalar(conn, "select count(*) from fc_runs where queue = %s", (queue,)))


def keyed(key: str) -> runledger.Job:
    """A job as ``fc.keyed``'s handler defaults make it (the test has not its registry)."""
    return runledger.Job(
        "fc.keyed", {"key": key}, queue="keyed", concurrency_key=key, concurrency_limit=2
    )


def test_a_key_with_limit_two_never_runs_more_than_two_handlers(
    dsn: str, tmp_path: Path, control: psycopg.Connection[Any]
) -> None:
    # A long poll interval: the key's jobs must follow each other through the NOTIFY sent
    # when one finishes (and each worker's own wake-ups), not one per poll.
    workers = start(dsn, tmp_path, "keyed", poll=5.0)
    try:
        with control.transaction():
            runledger.enqueue_many(
                control,
                [keyed("tenant:1") for _ in range(40)] + [keyed("tenant:2") for _ in range(10)],
            )
        started = time.monotonic()
        wait_for(workers, lambda: succeeded(control, "keyed") == 50, timeout=25, what="50 jobs")
        elapsed = time.monotonic() - started
    finally:
        workers.stop()
    # The most handlers of a key running at once: at each start, the intervals that cover it.
    most = dict(
        control.execute(
            """
            select j.concurrency_key, max(o.n)
            from fc_runs as r
            join runledger.jobs as j on j.id = r.job_id
            cross join lateral (
                select count(*) as n from fc_runs as x
                join runledger.jobs as y on y.id = x.job_id
                where y.concurrency_key = j.concurrency_key
                  and x.started <= r.started and r.started < x.finished
            ) as o
            group by 1
            """
        ).fetchall()
    )
    assert most == {"tenant:1": 2, "tenant:2": 2}, most
    # 40 jobs of 50 ms, two at a time: about 1 s of handler time; one per poll would be 100 s
    assert elapsed < 15, elapsed


def test_a_queue_limited_to_50_starts_per_second_never_exceeds_it(
    dsn: str, tmp_path: Path, control: psycopg.Connection[Any]
) -> None:
    runledger.set_queue_limits(control, "rated", rate=50, per=1.0)
    with control.transaction():
        runledger.enqueue_many(control, [runledger.Job("fc.plain", queue="rated")] * 160)
    workers = start(dsn, tmp_path, "rated")
    try:
        wait_for(workers, lambda: succeeded(control, "rated") == 160, timeout=25, what="160")
    finally:
        workers.stop()
    windows = control.execute(
        "select floor(extract(epoch from started_at)), count(*) from runledger.jobs"
        " where queue = 'rated' group by 1 order by 1"
    ).fetchall()
    counts = [int(n) for _, n in windows]
    assert max(counts) <= 50, windows
    assert max(counts) >= 40, windows  # the limit was what held them back
    assert len(counts) >= 4, windows


def test_a_paused_queue_has_no_start_while_paused(
    dsn: str, tmp_path: Path, control: psycopg.Connection[Any]
) -> None:
    with control.transaction():
        runledger.enqueue_many(control, [runledger.Job("fc.plain", queue="paused")] * 1500)
    workers = start(dsn, tmp_path, "paused,marker-{n}")
    try:
        wait_for(workers, lambda: succeeded(control, "paused") >= 100, timeout=20, what="100")
        runledger.pause_queue(control, "paused")
        paused: datetime.datetime = scalar(control, "select clock_timestamp()")
        # A job for each worker on a queue of its own, enqueued after the pause: once all
        # three have run, every worker has claimed since (its two queues in one statement).
        with control.transaction():
            runledger.enqueue_many(
                control, [runledger.Job("fc.plain", queue=f"marker-{n}") for n in range(3)]
            )
        wait_for(
            workers,
            lambda: (
                scalar(control, "select count(*) from fc_runs where queue like 'marker-%%'") == 3
            ),
            timeout=20,
            what="each worker's marker job",
        )
        resumed: datetime.datetime = scalar(control, "select clock_timestamp()")
        starts_while_paused = scalar(
            control,
            "select count(*) from runledger.jobs where queue = 'paused'"
            " and started_at between %s and %s",
            (paused, resumed),
        )
        running_after = scalar(
            control, "select count(*) from runledger.jobs where status = 'running'"
        )
        runledger.resume_queue(control, "paused")
        wait_for(workers, lambda: succeeded(control, "paused") == 1500, timeout=25, what="all 1500")
    finally:
        workers.stop()
    assert starts_while_paused == 0
    assert running_after == 0  # the queue's running jobs finished while it was paused
