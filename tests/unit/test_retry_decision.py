"""The retry decision, pure: Fail and the last attempt end the job; Retry(after=) sets a lower
bound on the policy's delay."""

from __future__ import annotations

import datetime

from runledger import Fail, Retry, RetryPolicy
from runledger.core.retry import RetryDecision, decide
from runledger.core.status import RetryReason

POLICY = RetryPolicy(base=1.0, factor=2.0, cap=60.0, jitter=0)


def test_fail_ends_the_job_whatever_attempts_are_left() -> None:
    decision = decide(Fail("no"), attempt=1, max_attempts=5, policy=POLICY, draw=0.5)
    assert decision == RetryDecision(retry=False)


def test_the_last_attempt_ends_the_job() -> None:
    decision = decide(ValueError(), attempt=5, max_attempts=5, policy=POLICY, draw=0.5)
    assert decision == RetryDecision(retry=False)


def test_any_other_error_waits_the_policys_delay() -> None:
    decision = decide(ValueError(), attempt=3, max_attempts=5, policy=POLICY, draw=0.5)
    assert decision == RetryDecision(retry=True, delay=4.0, reason=RetryReason.POLICY)


def test_retry_after_is_a_lower_bound_on_the_policys_delay() -> None:
    later = decide(Retry(after=30), attempt=1, max_attempts=5, policy=POLICY, draw=0.5)
    sooner = decide(Retry(after=0.1), attempt=3, max_attempts=5, policy=POLICY, draw=0.5)
    assert (later.delay, later.reason) == (30.0, RetryReason.HANDLER)
    assert (sooner.delay, sooner.reason) == (4.0, RetryReason.HANDLER)


def test_retry_at_a_moment_keeps_it_as_not_before() -> None:
    moment = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    decision = decide(Retry(after=moment), attempt=1, max_attempts=2, policy=POLICY, draw=0.0)
    assert (decision.retry, decision.not_before) == (True, moment)


def test_retry_on_the_last_attempt_ends_the_job() -> None:
    decision = decide(Retry(after=1), attempt=2, max_attempts=2, policy=POLICY, draw=0.0)
    assert not decision.retry
