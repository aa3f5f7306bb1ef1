"""Timeouts: ``timeout_seconds`` sets ``ctx.cancelled`` and ends the attempt ``timed_out``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, RetryPolicy

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]
WaitForJob = Callable[..., runledger.JobRecord]

FAST_RETRY = RetryPolicy(base=0.05, jitter=0)


@pytest.mark.parametrize(
    ("max_attempts", "final"), [(1, "failed"), (2, "succeeded")], ids=["last-attempt", "retried"]
)
def test_timed_out_handler_sees_ctx_cancelled_after_about_its_timeout_and_is_retried_or_failed(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    max_attempts: int,
    final: str,
) -> None:
    registry = runledger.Registry()
    waited: list[tuple[bool, float]] = []
    recorded = threading.Event()

    @registry.handler("slow", timeout_seconds=1, max_attempts=max_attempts, retry=FAST_RETRY)
    def slow(ctx: runledger.JobContext, payload: Any) -> Any:
        if ctx.attempt > 1:
            return {"attempt": ctx.attempt}
        begun = time.monotonic()
        cancelled = ctx.cancelled.wait(10)
        waited.append((cancelled, time.monotonic() - begun))
        recorded.set()
        return {"attempt": ctx.attempt}

    # One slot and no prefetch: the retry is not claimed while the timed-out attempt is still
    # in its handler (see test_late_results.py for what goes wrong when it is).
    runtime(registry, concurrency=1, prefetch=0)
    job_id = runledger.enqueue(autocommit_conn, "slow")

    assert recorded.wait(10)
    job = wait_for_job(job_id, final, timeout=10)

    [(cancelled, after)] = waited
    assert cancelled is True
    assert 0.8 <= after < 3.0
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert attempts[0].outcome is AttemptOutcome.TIMED_OUT
    assert attempts[0].error_type == "TimedOut"
    assert job.timeout_seconds == 1
    if final == "succeeded":
        assert [a.outcome for a in attempts] == [AttemptOutcome.TIMED_OUT, AttemptOutcome.SUCCEEDED]
        assert job.output == {"attempt": 2}
    else:
        assert len(attempts) == 1
        assert job.output is None
        assert job.last_error is not None
        assert job.last_error.startswith("TimedOut: ")


def test_timeout_of_a_prefetched_job_counts_from_when_its_handler_starts(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()
    long_started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    @registry.handler("long")
    def long(ctx: runledger.JobContext, payload: Any) -> Any:
        long_started.set()
        release.wait(10)
        return None

    @registry.handler("short", timeout_seconds=1, max_attempts=3, retry=FAST_RETRY)
    def short(ctx: runledger.JobContext, payload: Any) -> Any:
        calls.append(ctx.attempt)
        return "quick"

    # One thread; the default prefetch lets one more claimed job wait for it.
    runtime(registry, concurrency=1)
    runledger.enqueue(autocommit_conn, "long")
    assert long_started.wait(5)
    short_id = runledger.enqueue(autocommit_conn, "short")

    def claimed_for() -> float:
        row = autocommit_conn.execute(
            "select extract(epoch from now() - min(started_at))::float8 "
            "from runledger.job_attempts where job_id = %s",
            (short_id,),
        ).fetchone()
        return 0.0 if row is None or row[0] is None else float(row[0])

    try:
        # The thread stays busy until the short job has been held for longer than its limit.
        wait_until(lambda: claimed_for() > 1.5, 10, "the short job to be held for 1.5 s")
    finally:
        release.set()
    job = wait_for_job(short_id, "succeeded")

    assert calls == [1]
    assert job.attempt == 1
    assert [a.outcome for a in runledger.list_attempts(autocommit_conn, short_id)] == [
        AttemptOutcome.SUCCEEDED
    ]
