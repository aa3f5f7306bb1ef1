"""Handler outcomes: success, retried failures, Fail, Retry, BaseExceptions, non-JSON results."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, EventKind, JobStatus, RetryPolicy
from runledger.core.status import RetryReason

RuntimeFactory = Callable[..., runledger.Runtime]
WaitForJob = Callable[..., runledger.JobRecord]

FAST_RETRY = RetryPolicy(base=0.05, jitter=0)


def test_returned_value_succeeds_the_job_with_its_output_and_a_succeeded_attempt(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("math.double")
    def double(ctx: runledger.JobContext, payload: Any) -> Any:
        return {"doubled": payload["n"] * 2, "tags": ["a", None, 1.5]}

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "math.double", {"n": 21})

    job = wait_for_job(job_id, "succeeded")

    assert job.output == {"doubled": 42, "tags": ["a", None, 1.5]}
    assert job.attempt == 1
    assert job.finished_at is not None
    assert job.lease_token is None
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, AttemptOutcome.SUCCEEDED)]
    assert attempts[0].error_type is None
    assert attempts[0].finished_at is not None


def test_exception_is_retried_with_policy_backoff_and_succeeds_on_attempt_two(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("flaky", max_attempts=3, retry=FAST_RETRY)
    def flaky(ctx: runledger.JobContext, payload: Any) -> Any:
        if ctx.attempt == 1:
            raise RuntimeError("database of record said no")
        return "ok"

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "flaky")

    job = wait_for_job(job_id, "succeeded")

    assert (job.attempt, job.output) == (2, "ok")
    first, second = runledger.list_attempts(autocommit_conn, job_id)
    assert (first.attempt, first.outcome) == (1, AttemptOutcome.FAILED)
    assert first.error_type == "RuntimeError"
    assert first.error_message == "database of record said no"
    assert first.error_traceback is not None
    assert "RuntimeError: database of record said no" in first.error_traceback
    assert "in flaky" in first.error_traceback
    assert first.retry_reason is RetryReason.POLICY
    assert first.retry_at is not None
    assert first.finished_at is not None
    # jitter 0: the first retry waits exactly base = 0.05 s after the failure was written.
    assert first.retry_at - first.finished_at == datetime.timedelta(seconds=0.05)
    assert (second.attempt, second.outcome) == (2, AttemptOutcome.SUCCEEDED)
    assert second.started_at >= first.retry_at
    assert second.retry_at is None


def test_exhausting_max_attempts_fails_the_job_with_last_error_and_a_failed_event(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("always.broken", max_attempts=3, retry=FAST_RETRY)
    def broken(ctx: runledger.JobContext, payload: Any) -> Any:
        raise ValueError(f"broken on attempt {ctx.attempt}")

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "always.broken")

    job = wait_for_job(job_id, "failed")

    assert job.attempt == 3
    assert job.last_error == "ValueError: broken on attempt 3"
    assert job.finished_at is not None
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.attempt, a.outcome) for a in attempts] == [
        (1, AttemptOutcome.FAILED),
        (2, AttemptOutcome.FAILED),
        (3, AttemptOutcome.FAILED),
    ]
    assert [a.retry_reason for a in attempts] == [RetryReason.POLICY, RetryReason.POLICY, None]
    assert attempts[-1].retry_at is None
    kinds = [e.kind for e in runledger.list_events(autocommit_conn, job_id=job_id)]
    assert kinds.count(EventKind.JOB_RETRYING) == 2
    assert kinds[-1] is EventKind.JOB_FAILED


def test_fail_ends_the_job_at_once_even_with_attempts_left(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("refuse", max_attempts=5, retry=FAST_RETRY)
    def refuse(ctx: runledger.JobContext, payload: Any) -> Any:
        raise runledger.Fail("no")

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "refuse")

    job = wait_for_job(job_id, "failed")

    assert job.attempt == 1
    assert job.max_attempts == 5
    assert job.last_error == "Fail: no"
    attempts = runledger.list_attempts(autocommit_conn, job_id)
    assert [(a.attempt, a.outcome, a.error_message) for a in attempts] == [
        (1, AttemptOutcome.FAILED, "no")
    ]
    assert attempts[0].retry_at is None
    assert runledger.list_events(autocommit_conn, job_id=job_id)[-1].kind is EventKind.JOB_FAILED


def test_retry_after_sets_reason_handler_and_delays_the_next_attempt_by_at_least_after(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("later", max_attempts=3, retry=FAST_RETRY)
    def later(ctx: runledger.JobContext, payload: Any) -> Any:
        if ctx.attempt == 1:
            raise runledger.Retry(after=0.3)
        return "done"

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "later")

    wait_for_job(job_id, "succeeded")

    first, second = runledger.list_attempts(autocommit_conn, job_id)
    assert first.outcome is AttemptOutcome.FAILED
    assert first.error_type == "Retry"
    assert first.retry_reason is RetryReason.HANDLER
    assert first.finished_at is not None
    assert first.retry_at is not None
    assert first.retry_at - first.finished_at >= datetime.timedelta(seconds=0.3)
    assert second.started_at - first.finished_at >= datetime.timedelta(seconds=0.3)
    assert second.outcome is AttemptOutcome.SUCCEEDED


class Boom(BaseException):
    """A BaseException the runtime knows nothing about."""


@pytest.mark.parametrize(
    "error",
    [Boom("boom"), KeyboardInterrupt("interrupted"), SystemExit(3)],
    ids=["custom-base-exception", "keyboard-interrupt", "system-exit"],
)
def test_base_exception_from_handler_is_a_failure_and_the_worker_keeps_working(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    error: BaseException,
) -> None:
    registry = runledger.Registry()

    @registry.handler("explode", max_attempts=1)
    def explode(ctx: runledger.JobContext, payload: Any) -> Any:
        raise error

    @registry.handler("fine")
    def fine(ctx: runledger.JobContext, payload: Any) -> Any:
        return "still here"

    rt = runtime(registry, concurrency=1)
    exploded = runledger.enqueue(autocommit_conn, "explode")
    failed = wait_for_job(exploded, "failed")
    following = runledger.enqueue(autocommit_conn, "fine")

    assert wait_for_job(following, "succeeded").output == "still here"
    [attempt] = runledger.list_attempts(autocommit_conn, exploded)
    assert attempt.outcome is AttemptOutcome.FAILED
    assert attempt.error_type == type(error).__qualname__
    assert failed.last_error is not None
    assert failed.last_error.startswith(f"{type(error).__qualname__}: ")
    assert all(loop.alive() for loop in rt.loops())


def test_non_json_return_value_is_a_failed_attempt_saying_it_is_not_json(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("returns.set", max_attempts=1)
    def returns_set(ctx: runledger.JobContext, payload: Any) -> Any:
        return {"ids": {1, 2}}

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "returns.set")

    job = wait_for_job(job_id, "failed")

    [attempt] = runledger.list_attempts(autocommit_conn, job_id)
    assert attempt.outcome is AttemptOutcome.FAILED
    assert attempt.error_message is not None
    assert "not JSON" in attempt.error_message
    assert job.output is None
    assert job.status is JobStatus.FAILED
