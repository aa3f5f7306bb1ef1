"""Retry decisions: the backoff policy and the exceptions a handler raises to steer retries
(``Retry``, ``Fail``, ``Snooze``)."""

from __future__ import annotations

import datetime
import math

import attrs

from runledger.core.errors import ValidationError
from runledger.core.job import MAX_DELAY, MAX_RUN_AT
from runledger.core.status import RetryReason


class InvalidRetryPolicy(ValidationError):
    """A ``RetryPolicy`` field is out of range."""

    def __init__(self, *, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"RetryPolicy.{field} must be {rule}, got {value!r}")


def _check(field: str, value: float, *, low: float, high: float | None = None) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= low:
        raise InvalidRetryPolicy(field=field, value=value, rule=f">= {low}")
    if high is not None and value > high:
        raise InvalidRetryPolicy(field=field, value=value, rule=f"<= {high}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits ``base * factor**(n-1)`` seconds,
    capped at ``cap``, then spread by ``±jitter`` of itself.

    Attributes:
        base: the wait after the first failed attempt, in seconds.
        factor: growth per attempt (1 gives a constant wait).
        cap: the longest wait, in seconds.
        jitter: the fraction (0..1) by which a wait is randomly lengthened or shortened, so
            jobs failing together do not retry together.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: float = 0.2

    def __attrs_post_init__(self) -> None:
        _check("base", self.base, low=0)
        _check("factor", self.factor, low=1)
        _check("cap", self.cap, low=0)
        _check("jitter", self.jitter, low=0, high=1)

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        ``rand`` is a uniform random number in [0, 1): passed in so the core stays pure.
        """
        exponent = max(attempt - 1, 0)
        try:
            raw = min(self.cap, self.base * self.factor**exponent)
        except OverflowError:
            raw = self.cap
        spread = 1 - self.jitter + 2 * self.jitter * rand
        return max(0.0, min(self.cap, raw * spread))


DEFAULT_RETRY_POLICY = RetryPolicy()


class Retry(Exception):
    """Raise from a handler to retry the job no sooner than ``after``.

    ``after`` is a number of seconds, a ``timedelta`` or an aware ``datetime``; it is a lower
    bound, combined with the retry policy's delay (the later of the two wins). The attempt
    still counts against ``max_attempts``; when none are left the job fails.
    """

    def __init__(
        self,
        after: float | datetime.timedelta | datetime.datetime | None = None,
        reason: str | None = None,
    ) -> None:
        self.after = after
        self.reason = reason
        super().__init__(reason or f"retry requested (after={after!r})")

    def lower_bound_seconds(self) -> float:
        """``after`` as seconds from now when it is a duration, else 0; at most ``MAX_DELAY``
        (a longer one, or an infinite one, waits that long), and 0 for NaN."""
        seconds = 0.0
        if isinstance(self.after, datetime.timedelta):
            seconds = self.after.total_seconds()
        elif isinstance(self.after, int | float) and not isinstance(self.after, bool):
            seconds = float(self.after)
        if math.isnan(seconds):
            return 0.0
        return min(max(seconds, 0.0), MAX_DELAY.total_seconds())

    def not_before(self) -> datetime.datetime | None:
        """``after`` when it is a datetime, else None; at most ``MAX_RUN_AT``."""
        if not isinstance(self.after, datetime.datetime):
            return None
        if self.after.tzinfo is not None and self.after > MAX_RUN_AT:
            return MAX_RUN_AT
        return self.after


class InvalidSnooze(ValidationError):
    """``Snooze(after=...)`` is not a duration from 0 to ``MAX_DELAY``.

    Attributes:
        value: what was given as ``after``.
        maximum: the longest snooze allowed (``runledger.core.job.MAX_DELAY``).
    """

    def __init__(self, *, value: object, maximum: datetime.timedelta) -> None:
        self.value = value
        self.maximum = maximum
        super().__init__(
            "Snooze(after=...) must be a timedelta or a number of seconds from 0 to "
            f"{maximum.days:,} days ({maximum.total_seconds():,.0f} s), got {value!r}"
        )


class Snooze(Exception):
    """Raise from a handler to put the job back in its queue for ``after`` seconds without
    spending an attempt (``Retry`` spends one).

    The attempt is recorded with outcome ``snoozed`` and the job's attempt count goes back to
    what it was before the claim, so ``max_attempts`` is untouched and the next run sees the
    same ``ctx.attempt``. Handy for polling an external system. Writes made on ``ctx.conn``
    before raising commit with the snooze (it is not a failure).

    Args:
        after: seconds (int or float) or a ``timedelta``, from 0 to ``MAX_DELAY``.

    Raises:
        InvalidSnooze: ``after`` is negative, NaN, infinite, over ``MAX_DELAY`` or not a
            duration (raised by the constructor, so inside the handler: the attempt then
            fails with it like with any other error).
    """

    def __init__(self, after: float | datetime.timedelta) -> None:
        self.after = after
        self.seconds = _snooze_seconds(after)
        """``after`` in seconds."""
        super().__init__(f"snoozed for {self.seconds:g} s")


def _snooze_seconds(after: object) -> float:
    if isinstance(after, datetime.timedelta):
        seconds = after.total_seconds()
    elif isinstance(after, int | float) and not isinstance(after, bool):
        try:
            seconds = float(after)
        except OverflowError:  # an int too large for a float
            raise InvalidSnooze(value=after, maximum=MAX_DELAY) from None
    else:
        raise InvalidSnooze(value=after, maximum=MAX_DELAY)
    if not 0 <= seconds <= MAX_DELAY.total_seconds():  # also refuses NaN and infinities
        raise InvalidSnooze(value=after, maximum=MAX_DELAY)
    return seconds


class Fail(Exception):
    """Raise from a handler to fail the job now, without further attempts."""

    def __init__(self, reason: str = "failed by the handler") -> None:
        self.reason = reason
        super().__init__(reason)


@attrs.frozen(kw_only=True)
class RetryDecision:
    """What follows an attempt that did not succeed: ``retry`` it after ``delay`` seconds
    (and not before ``not_before``), ``reason`` saying who chose the time; or end the job
    (``retry`` False). ``snooze``: the handler snoozed, so the attempt is not counted (the
    job's attempt count goes back by one)."""

    retry: bool
    delay: float = 0.0
    not_before: datetime.datetime | None = None
    reason: RetryReason | None = None
    snooze: bool = False


def decide(
    error: BaseException, *, attempt: int, max_attempts: int, policy: RetryPolicy, draw: float
) -> RetryDecision:
    """Decide what follows attempt ``attempt`` of ``max_attempts`` that ended with ``error``.

    ``Snooze`` requeues the job after its ``after`` without counting the attempt, whatever
    attempts are left (neither the policy nor ``max_attempts`` apply). ``Fail`` ends the job
    now, and so does the last attempt; otherwise the job is retried after the policy's delay
    for this attempt (``draw``, in [0, 1), picks the jitter), or after
    ``Retry(after=...)``'s lower bound if that is later. Pure: no clock, no I/O.
    """
    if isinstance(error, Snooze):
        return RetryDecision(
            retry=True, delay=error.seconds, reason=RetryReason.HANDLER, snooze=True
        )
    if isinstance(error, Fail) or attempt >= max_attempts:
        return RetryDecision(retry=False)
    delay = policy.delay(attempt, draw)
    if isinstance(error, Retry):
        return RetryDecision(
            retry=True,
            delay=max(delay, error.lower_bound_seconds()),
            not_before=error.not_before(),
            reason=RetryReason.HANDLER,
        )
    return RetryDecision(retry=True, delay=delay, reason=RetryReason.POLICY)
