"""How long an idempotency key keeps a second enqueue from queueing another job."""

from __future__ import annotations

import datetime
import enum
from typing import Any

import attrs

from runledger.core.errors import InvalidUnique

MAX_PERIOD = datetime.timedelta(days=365_000)
"""The longest period ``Unique.within`` takes (about 1,000 years, as ``MAX_DELAY``)."""


class UniqueMode(enum.StrEnum):
    """The window in which a key returns the job holding it instead of queueing a new one."""

    FOREVER = "forever"
    """As long as the job is in the ledger (until the pruner deletes it): the default."""
    ACTIVE = "active"
    """While the job is queued (scheduled, awaiting a retry) or running."""
    WITHIN = "within"
    """For a period from the holder's enqueue."""


def _period(value: object) -> datetime.timedelta | None:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        period = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            period = datetime.timedelta(seconds=value)
        except (OverflowError, ValueError):
            raise InvalidUnique(given=value, reason="the period is too long") from None
    else:
        raise InvalidUnique(given=value, reason="the period must be a timedelta or seconds")
    if not datetime.timedelta(0) < period <= MAX_PERIOD:
        raise InvalidUnique(
            given=value, reason=f"the period must be over 0 and at most {MAX_PERIOD.days:,} days"
        )
    return period


@attrs.frozen(kw_only=True)
class Unique:
    """How long a job's idempotency key returns that job to a second enqueue of the key.

    Build one with ``Unique.forever()`` (the default), ``Unique.active()`` or
    ``Unique.within(period)``; pass it as ``unique=`` with an ``idempotency_key`` to
    ``Job``/``enqueue``. Within the window, the same request returns the job holding the
    key and a different one raises ``IdempotencyConflict``; after it, the enqueue queues a
    new job, which holds the key from then on. The window is the one the *new* enqueue asks
    for, judged against the job holding the key (like Oban's ``unique: [period:, states:]``
    and River's ``UniqueOpts``, which check the inserted job's options).

    Attributes:
        mode: which window (``UniqueMode``).
        period: for ``WITHIN``, its length; None otherwise.
    """

    mode: UniqueMode = attrs.field(converter=UniqueMode)
    period: datetime.timedelta | None = attrs.field(default=None, converter=_period)

    def __attrs_post_init__(self) -> None:
        if (self.mode is UniqueMode.WITHIN) != (self.period is not None):
            raise InvalidUnique(
                given=self.period, reason="a period goes with Unique.within() and only with it"
            )

    @classmethod
    def forever(cls) -> Unique:
        """The key returns its job for as long as the job is in the ledger (the default)."""
        return cls(mode=UniqueMode.FOREVER)

    @classmethod
    def active(cls) -> Unique:
        """The key returns its job while that job is queued or running; once it finished
        (succeeded, failed or cancelled), the next enqueue queues a new job."""
        return cls(mode=UniqueMode.ACTIVE)

    @classmethod
    def within(cls, period: datetime.timedelta | float) -> Unique:
        """The key returns its job for ``period`` (a timedelta or seconds) from that job's
        enqueue, whatever its status; after that, the next enqueue queues a new job.

        Raises:
            InvalidUnique: ``period`` is not a positive duration of at most ``MAX_PERIOD``.
        """
        return cls(mode=UniqueMode.WITHIN, period=period)

    @property
    def period_seconds(self) -> float | None:
        """``period`` in seconds, or None."""
        return None if self.period is None else self.period.total_seconds()

    def request_part(self) -> dict[str, Any]:
        """What this window adds to a keyed request's fingerprint: nothing for the default,
        so keys enqueued before unique modes existed still match the same request."""
        if self.mode is UniqueMode.FOREVER:
            return {}
        if self.mode is UniqueMode.ACTIVE:
            return {"unique": "active"}
        return {"unique": "within", "period_seconds": self.period_seconds}

    def holds(
        self,
        *,
        holder_live: bool,
        holder_created_at: datetime.datetime,
        now: datetime.datetime,
    ) -> bool:
        """Whether the window still covers the job holding the key.

        Args:
            holder_live: the holder is queued or running.
            holder_created_at: when the holder was enqueued (the database's clock).
            now: the enqueueing transaction's clock.
        """
        if self.mode is UniqueMode.FOREVER:
            return True
        if self.mode is UniqueMode.ACTIVE:
            return holder_live
        assert self.period is not None
        return now < holder_created_at + self.period


FOREVER = Unique.forever()
