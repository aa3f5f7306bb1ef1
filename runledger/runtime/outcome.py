"""Turning what a handler did into the attempt result the store writes."""

from __future__ import annotations

import random
import traceback
import uuid
from typing import Protocol

import attrs

from runledger.core.payload import JsonValue
from runledger.core.retry import RetryPolicy, decide
from runledger.core.status import AttemptOutcome, JobStatus, RetryReason
from runledger.postgres.attempts import AttemptResult, ClaimedJob

__all__ = ["Attempt", "AttemptResult", "failure", "released", "snoozed", "success"]


class Leased(Protocol):
    """An attempt as its lease names it."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def lease_token(self) -> uuid.UUID: ...


class Attempt(Leased, Protocol):
    """The attempt an outcome is about."""

    @property
    def attempt(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...


@attrs.frozen(kw_only=True)
class Orphan:
    """An attempt known only by its job id and lease token (a claim whose reply was lost)."""

    id: uuid.UUID
    lease_token: uuid.UUID


_random = random.SystemRandom()

MAX_ERROR_MESSAGE = 8 * 1024
"""Characters of an error's message kept in the ledger (the rest is cut)."""
MAX_TRACEBACK = 64 * 1024
"""Characters of a traceback kept in the ledger (its end, where the error is)."""


def storable(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` as PostgreSQL can store it: without NUL characters or lone surrogates (an
    exception's message may carry either, and one refused outcome would hold back every
    outcome written with it), and cut to ``limit`` characters, keeping its start (or its
    end with ``keep_end``: a traceback's last lines name the error)."""
    text = text.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        cut = len(text) - limit
        if keep_end:
            return f"[{cut} characters cut]\n" + text[-limit:]
        return text[:limit] + f"... [{cut} characters cut]"
    return text


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
    """An attempt that did not succeed: retried, snoozed (``Snooze``: not counted) or ended,
    as ``runledger.core.retry.decide`` says."""
    decision = decide(
        error,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        policy=policy,
        draw=_random.random(),
    )
    if decision.snooze:
        return snoozed(job, decision.delay)
    if tb is None:
        tb = "".join(traceback.format_exception(error))
    error_type = storable(type(error).__qualname__, MAX_ERROR_MESSAGE)
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not cost the attempt its outcome
        message = ""
    message = storable(message or error_type, MAX_ERROR_MESSAGE)
    tb = storable(tb, MAX_TRACEBACK, keep_end=True)
    if not decision.retry:
        return AttemptResult(
            job_id=job.id, lease_token=job.lease_token, status=JobStatus.FAILED,
            outcome=outcome, error_type=error_type, error_message=message, traceback=tb,
        )  # fmt: skip
    return AttemptResult(
        job_id=job.id, lease_token=job.lease_token, status=JobStatus.QUEUED, outcome=outcome,
        error_type=error_type, error_message=message, traceback=tb, retry_delay=decision.delay,
        retry_not_before=decision.not_before, retry_reason=decision.reason,
    )  # fmt: skip


def snoozed(job: Leased, delay: float) -> AttemptResult:
    """The handler raised ``Snooze``: the job is queued again ``delay`` seconds from now and
    the attempt is not counted. No error is recorded: a snooze is not a failure."""
    return AttemptResult(
        job_id=job.id,
        lease_token=job.lease_token,
        status=JobStatus.QUEUED,
        outcome=AttemptOutcome.SNOOZED,
        retry_delay=delay,
        retry_reason=RetryReason.HANDLER,
    )


def released(job: Leased, error: BaseException | None = None) -> AttemptResult:
    """An attempt whose handler never started, handed back without counting it: at
    shutdown, or (with the ``error`` that says why) by the reaper after its worker died, or
    after a claim whose reply was lost."""
    return AttemptResult(
        job_id=job.id,
        lease_token=job.lease_token,
        status=JobStatus.QUEUED,
        outcome=AttemptOutcome.RELEASED,
        error_type=None if error is None else type(error).__qualname__,
        error_message=None if error is None else str(error),
    )
