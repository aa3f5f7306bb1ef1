"""Turning what a handler did into the attempt result the store writes."""

from __future__ import annotations

import datetime
import random
import traceback
import uuid
from typing import Protocol

from runledger.core.payload import JsonValue
from runledger.core.retry import Fail, Retry, RetryPolicy
from runledger.core.status import AttemptOutcome, JobStatus, RetryReason
from runledger.postgres.attempts import AttemptResult, ClaimedJob

__all__ = ["Attempt", "AttemptResult", "failure", "released", "success"]


class Attempt(Protocol):
    """The attempt an outcome is about."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def lease_token(self) -> uuid.UUID: ...
    @property
    def attempt(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...


_random = random.SystemRandom()


def success(job: ClaimedJob, output: JsonValue) -> AttemptResult:
    """The handler returned ``output``."""
    return AttemptResult(
        job_id=job.id,
        lease_token=job.lease_token,
        status=JobStatus.SUCCEEDED,
        outcome=AttemptOutcome.SUCCEEDED,
        output=output,
    )


def failure(
    job: Attempt,
    error: BaseException,
    policy: RetryPolicy,
    *,
    outcome: AttemptOutcome = AttemptOutcome.FAILED,
    tb: str | None = None,
) -> AttemptResult:
    """A failed attempt: retried by the policy (or ``Retry``) while attempts remain.

    ``Fail`` ends the job now; exhausting ``max_attempts`` ends it ``failed``.
    """
    if tb is None:
        tb = "".join(traceback.format_exception(error))
    error_type = type(error).__qualname__
    message = str(error) or error_type
    last = job.attempt >= job.max_attempts
    if isinstance(error, Fail) or last:
        return AttemptResult(
            job_id=job.id, lease_token=job.lease_token, status=JobStatus.FAILED,
            outcome=outcome, error_type=error_type, error_message=message, traceback=tb,
        )  # fmt: skip
    delay = policy.delay(job.attempt, _random.random())
    not_before: datetime.datetime | None = None
    reason = RetryReason.POLICY
    if isinstance(error, Retry):
        delay = max(delay, error.lower_bound_seconds())
        not_before = error.not_before()
        reason = RetryReason.HANDLER
    return AttemptResult(
        job_id=job.id, lease_token=job.lease_token, status=JobStatus.QUEUED, outcome=outcome,
        error_type=error_type, error_message=message, traceback=tb, retry_delay=delay,
        retry_not_before=not_before, retry_reason=reason,
    )  # fmt: skip


def released(job: Attempt, error: BaseException | None = None) -> AttemptResult:
    """An attempt whose handler never started, handed back without counting it: at
    shutdown, or (with the ``error`` that says why) by the reaper after its worker died."""
    return AttemptResult(
        job_id=job.id,
        lease_token=job.lease_token,
        status=JobStatus.QUEUED,
        outcome=AttemptOutcome.RELEASED,
        error_type=None if error is None else type(error).__qualname__,
        error_message=None if error is None else str(error),
    )
