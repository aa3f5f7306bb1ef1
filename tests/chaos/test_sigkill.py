"""A real `runledger worker` process killed with SIGKILL mid-job: another runtime runs the job
again once the lease expires. And SIGTERM: the worker finishes its handler and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, JobStatus, RetryPolicy

pytestmark = pytest.mark.slow

APP = textwrap.dedent(
    """
    import os
    import pathlib
    import threading

    import runledger

    registry = runledger.Registry()
    MARKERS = pathlib.Path(os.environ["CHAOS_MARKERS"])


    @registry.handler("chaos.block")
    def block(ctx, payload):
        (MARKERS / f"{ctx.job_id}-{ctx.attempt}").write_text(str(os.getpid()))
        threading.Event().wait(300)  # blocks until the process is killed


    @registry.handler("chaos.brief")
    def brief(ctx, payload):
        (MARKERS / f"{ctx.job_id}-{ctx.attempt}").write_text(str(os.getpid()))
        ctx.cancelled.wait(0.5)
        return {"pid": os.getpid()}
    """
)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.02)


class Worker:
    """A `python -m runledger.cli worker` subprocess running the app in ``tmp_path``."""

    def __init__(self, dsn: str, tmp_path: Path) -> None:
        (tmp_path / "chaos_app.py").write_text(APP)
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.log = tmp_path / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
        env.pop("DATABASE_URL", None)
        env.update(
            PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]),
            CHAOS_MARKERS=str(self.markers),
            RUNLEDGER_LEASE_SECONDS="2",
            RUNLEDGER_POLL_INTERVAL="0.2",
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "runledger.cli", "worker", "--dsn", dsn,
                    "--app", "chaos_app:registry", "--concurrency", "1",
                ],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def marker(self, job_id: uuid.UUID, attempt: int) -> Path:
        return self.markers / f"{job_id}-{attempt}"

    def wait_started(self, job_id: uuid.UUID, attempt: int = 1) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"the worker exited with {self.proc.returncode}:\n{self.output()}")
            return self.marker(job_id, attempt).exists()

        wait_until(started, timeout=30, what=f"the worker to start job {job_id}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def worker(dsn: str, tmp_path: Path) -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        w = Worker(dsn, tmp_path)
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            w.close()


def test_job_of_a_sigkilled_worker_is_run_again_by_another_runtime_after_its_lease_expires(
    dsn: str, autocommit_conn: psycopg.Connection[Any], worker: Callable[[], Worker]
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "chaos.block", {"n": 1})
    w = worker()
    w.wait_started(job_id)
    running = runledger.get_job(autocommit_conn, job_id)
    assert running.status is JobStatus.RUNNING

    os.kill(w.proc.pid, signal.SIGKILL)
    assert w.proc.wait(30) == -signal.SIGKILL

    ran_again = threading.Event()
    registry = runledger.Registry()

    @registry.handler("chaos.block", retry=RetryPolicy(base=0.05, jitter=0))
    def block(ctx: runledger.JobContext, payload: Any) -> Any:
        ran_again.set()
        return {"survivor": ctx.attempt}

    with runledger.Runtime(
        dsn, registry, concurrency=1, poll_interval=0.1, lease_seconds=2, reap_interval=0.2
    ):
        assert ran_again.wait(20), "the job was never run again"
        wait_until(
            lambda: runledger.get_job(autocommit_conn, job_id).status == "succeeded",
            what="the job to succeed in the surviving runtime",
        )

    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.attempt, job.output) == (2, {"survivor": 2})
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.LEASE_EXPIRED),
        (2, AttemptOutcome.SUCCEEDED),
    ]
    assert f":{w.proc.pid}:" in attempts[0].worker
    assert running.lease_owner == attempts[0].worker


def test_sigterm_lets_the_running_handler_finish_and_the_worker_exits_0(
    dsn: str, autocommit_conn: psycopg.Connection[Any], worker: Callable[[], Worker]
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "chaos.brief")
    w = worker()
    w.wait_started(job_id)

    os.kill(w.proc.pid, signal.SIGTERM)

    try:
        code = w.proc.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit after SIGTERM:\n{w.output()}")
    assert code == 0, w.output()
    assert "Traceback" not in w.output()
    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.status, job.attempt) == (JobStatus.SUCCEEDED, 1)
    assert job.output == {"pid": w.proc.pid}
    assert [(a.attempt, a.outcome) for a in runledger.list_attempts(autocommit_conn, job_id)] == [
        (1, AttemptOutcome.SUCCEEDED)
    ]
