"""An outcome the database cannot store holds back no other: error texts are made storable,
and an outcome still refused is replaced by a failure that says why."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
import pytest

import runledger
from runledger import JobStatus
from tests.runtime.conftest import RuntimeFactory, WaitForJob, wait_until

GOOD = 6


def test_an_error_message_with_nul_and_a_lone_surrogate_is_stored_escaped(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("poison.message", max_attempts=1)
    def poison(ctx: runledger.JobContext, payload: Any) -> Any:
        raise ValueError("nul \x00 and \ud800 here")

    @registry.handler("poison.good")
    def good(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload

    runtime(registry, concurrency=2)
    bad = runledger.enqueue(autocommit_conn, "poison.message", {})
    goods = [runledger.enqueue(autocommit_conn, "poison.good", n) for n in range(GOOD)]

    failed = wait_for_job(bad, "failed")
    assert failed.last_error == "ValueError: nul \\x00 and \\ud800 here"
    for job_id in goods:
        assert wait_for_job(job_id, "succeeded").output is not None


def test_an_output_the_ledger_cannot_encode_fails_its_job_and_holds_back_no_other(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("poison.output", max_attempts=1)
    def poison(ctx: runledger.JobContext, payload: Any) -> Any:
        return 10**5000  # JSON, but Python refuses to write an int of 5,001 digits as text

    @registry.handler("poison.good")
    def good(ctx: runledger.JobContext, payload: Any) -> Any:
        return payload

    runtime(registry, concurrency=2)
    bad = runledger.enqueue(autocommit_conn, "poison.output", {})
    goods = [runledger.enqueue(autocommit_conn, "poison.good", n) for n in range(GOOD)]

    failed = wait_for_job(bad, "failed")
    assert failed.last_error is not None
    assert failed.last_error.startswith("OutcomeNotWritable: the database refused"), (
        failed.last_error
    )
    for n, job_id in enumerate(goods):
        job = wait_for_job(job_id, "succeeded")
        assert (job.status, job.output) == (JobStatus.SUCCEEDED, n)


@pytest.mark.parametrize(
    "after",
    [
        1e300,
        float("inf"),
        datetime.timedelta.max,
        datetime.datetime.max.replace(tzinfo=datetime.UTC),
    ],
)
def test_a_retry_beyond_the_ledgers_time_range_waits_until_its_end(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    after: Any,
) -> None:
    registry = runledger.Registry()

    @registry.handler("retry.forever", max_attempts=2)
    def forever(ctx: runledger.JobContext, payload: Any) -> Any:
        raise runledger.Retry(after=after)

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "retry.forever", {})

    def retried(job: runledger.JobRecord) -> bool:
        return (job.status, job.attempt) == (JobStatus.QUEUED, 1)

    wait_until(
        lambda: retried(runledger.get_job(autocommit_conn, job_id)),
        what="the first attempt's outcome",
    )
    job = runledger.get_job(autocommit_conn, job_id)
    assert job.status is JobStatus.QUEUED
    assert job.run_at.year >= 2900, job.run_at
    (attempt,) = runledger.list_attempts(autocommit_conn, job_id)
    assert attempt.retry_reason == "handler"
