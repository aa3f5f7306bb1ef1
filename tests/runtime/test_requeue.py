"""``runledger.requeue``: a dead job runs again with a fresh budget; succeeded jobs are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, EventKind, JobStatus
from runledger.errors import JobNotRequeueable

RuntimeFactory = Callable[..., runledger.Runtime]
WaitForJob = Callable[..., runledger.JobRecord]


def test_requeued_failed_job_runs_again_succeeds_and_leaves_a_requeued_event(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()
    calls: list[int] = []

    @registry.handler("second.time.lucky", max_attempts=2)
    def lucky(ctx: runledger.JobContext, payload: Any) -> Any:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise runledger.Fail("not yet")
        return {"calls": len(calls)}

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "second.time.lucky")
    assert wait_for_job(job_id, "failed").last_error == "Fail: not yet"

    assert runledger.requeue(autocommit_conn, job_id) is True
    job = wait_for_job(job_id, "succeeded")

    assert job.output == {"calls": 2}
    assert calls == [1, 1]  # a fresh attempt budget: numbering starts again
    assert [(a.attempt, a.outcome) for a in runledger.list_attempts(autocommit_conn, job_id)] == [
        (1, AttemptOutcome.FAILED),
        (1, AttemptOutcome.SUCCEEDED),
    ]
    kinds = [e.kind for e in runledger.list_events(autocommit_conn, job_id=job_id)]
    assert kinds == [
        EventKind.JOB_ENQUEUED,
        EventKind.JOB_STARTED,
        EventKind.JOB_FAILED,
        EventKind.JOB_REQUEUED,
        EventKind.JOB_STARTED,
        EventKind.JOB_SUCCEEDED,
    ]


def test_requeue_of_a_succeeded_job_raises_job_not_requeueable(
    autocommit_conn: psycopg.Connection[Any], runtime: RuntimeFactory, wait_for_job: WaitForJob
) -> None:
    registry = runledger.Registry()

    @registry.handler("fine")
    def fine(ctx: runledger.JobContext, payload: Any) -> Any:
        return "done"

    runtime(registry)
    job_id = runledger.enqueue(autocommit_conn, "fine")
    wait_for_job(job_id, "succeeded")

    with pytest.raises(JobNotRequeueable) as raised:
        runledger.requeue(autocommit_conn, job_id)

    assert raised.value.job_id == job_id
    assert raised.value.status == JobStatus.SUCCEEDED
    job = runledger.get_job(autocommit_conn, job_id)
    assert (job.status, job.attempt, job.output) == (JobStatus.SUCCEEDED, 1, "done")
