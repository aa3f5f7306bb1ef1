"""A worker SIGKILLed while claimed jobs wait in its prefetch buffer: the jobs whose handler
started are charged the attempt (``lease_expired``), the ones that never started are released
without counting it (``released``) and run again, even with ``max_attempts=1``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, JobStatus

pytestmark = pytest.mark.slow

JOBS = 20

APP = textwrap.dedent(
    """
    import os
    import pathlib
    import threading

    import runledger

    registry = runledger.Registry()
    MARKERS = pathlib.Path(os.environ["CHAOS_MARKERS"])


    @registry.handler("prefetch.block", max_attempts=1)
    def block(ctx, payload):
        (MARKERS / str(ctx.job_id)).write_text(str(os.getpid()))
        threading.Event().wait(300)  # blocks until the process is killed
    """
)

MARKED = """
select count(*) from runledger.jobs
where status = 'running' and handler_started_at is not null
"""


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.02)


def test_a_crash_charges_started_handlers_and_releases_prefetched_jobs(
    dsn: str, autocommit_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    job_ids = runledger.enqueue_many(
        autocommit_conn, [runledger.Job("prefetch.block", {"n": n}) for n in range(JOBS)]
    )
    (tmp_path / "prefetch_app.py").write_text(APP)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    env.pop("DATABASE_URL", None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]),
        CHAOS_MARKERS=str(markers),
        RUNLEDGER_LEASE_SECONDS="2",
        RUNLEDGER_POLL_INTERVAL="0.2",
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "runledger.cli", "worker", "--dsn", dsn,
                "--app", "prefetch_app:registry", "--concurrency", "2",
            ],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # Two handlers block; with the default prefetch (the concurrency) two more jobs are
        # claimed and wait for a thread.
        def two_started() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the worker exited with {proc.returncode}:\n{log.read_text()}")
            return len(list(markers.iterdir())) == 2

        wait_until(two_started, what="two handlers to start")
        wait_until(
            lambda: autocommit_conn.execute(MARKED).fetchone() == (2,),
            what="the ledger to say two handlers started",
        )
        running = autocommit_conn.execute(
            "select count(*) from runledger.jobs where status = 'running'"
        ).fetchone()
        assert running == (4,), log.read_text()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    entered = {uuid.UUID(p.name) for p in markers.iterdir()}

    ran: list[uuid.UUID] = []
    registry = runledger.Registry()

    @registry.handler("prefetch.block", max_attempts=1)
    def block(ctx: runledger.JobContext, payload: Any) -> Any:
        ran.append(ctx.job_id)
        return "ok"

    with runledger.Runtime(
        dsn, registry, concurrency=2, poll_interval=0.1, lease_seconds=2, reap_interval=0.2
    ):
        wait_until(
            lambda: (
                autocommit_conn.execute(
                    "select count(*) from runledger.jobs where status in ('queued', 'running')"
                ).fetchone()
                == (0,)
            ),
            what="every job to finish",
        )

    jobs = {j: runledger.get_job(autocommit_conn, j) for j in job_ids}
    failed = {j for j, job in jobs.items() if job.status is JobStatus.FAILED}
    assert failed == entered
    for job_id in entered:
        attempts = runledger.list_attempts(autocommit_conn, job_id)
        assert [(a.attempt, a.outcome) for a in attempts] == [(1, AttemptOutcome.LEASE_EXPIRED)]
    released = [
        j
        for j in job_ids
        if [a.outcome for a in runledger.list_attempts(autocommit_conn, j)]
        == [AttemptOutcome.RELEASED, AttemptOutcome.SUCCEEDED]
    ]
    assert len(released) == 2, "the two prefetched jobs were released, then run"
    for job_id in set(job_ids) - entered:
        job = jobs[job_id]
        assert (job.status, job.attempt) == (JobStatus.SUCCEEDED, 1)
    assert sorted(ran, key=str) == sorted(set(job_ids) - entered, key=str)
