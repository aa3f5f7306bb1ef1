"""The claimer under flow control: a claim that admission cut short claims again at once, so
jobs behind a key that just filled up do not wait for the next poll."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

import runledger

RuntimeFactory = Callable[..., runledger.Runtime]
WaitForJob = Callable[..., runledger.JobRecord]


def test_jobs_behind_a_key_that_filled_up_start_without_waiting_for_a_poll(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()
    release = threading.Event()

    @registry.handler("keyed")
    def keyed(ctx: runledger.JobContext, payload: Any) -> None:
        release.wait(10)

    @registry.handler("plain")
    def plain(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    # Ahead in the queue: jobs of one key with limit 1, more than a claim asks for; behind
    # them, jobs without a key.
    runledger.enqueue_many(
        autocommit_conn,
        [runledger.Job("keyed", {"n": n}, priority=10, concurrency_key="k") for n in range(12)]
        + [runledger.Job("plain", {"n": n}) for n in range(3)],
    )
    try:
        started = time.monotonic()
        runtime(registry, concurrency=4, poll_interval=30.0)
        rows = autocommit_conn.execute(
            "select id from runledger.jobs where job_type = 'plain'"
        ).fetchall()
        for (job_id,) in rows:
            wait_for_job(job_id, "succeeded", timeout=10)
        # the first claim took one keyed job and turned the rest away; the next, at once,
        # passed over the full key: long before the 30 s poll
        assert time.monotonic() - started < 10
        running = autocommit_conn.execute(
            "select count(*) from runledger.jobs where job_type = 'keyed' and status = 'running'"
        ).fetchone()
        assert running == (1,)
    finally:
        release.set()
