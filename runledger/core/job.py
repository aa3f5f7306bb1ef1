"""The spec of one job to enqueue, validated on construction."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import attrs

from runledger.core.errors import (
    BlankIdempotencyKey,
    BlankJobType,
    BlankQueue,
    ConflictingRunAt,
    InvalidDelay,
    InvalidMaxAttempts,
    InvalidTimeout,
    InvalidUnique,
    NaiveRunAt,
    NulInText,
    PriorityOutOfRange,
    RunAtOutOfRange,
    SurrogateInText,
    TextTooLong,
)
from runledger.core.payload import JsonValue, check_json, dumps, first_surrogate
from runledger.core.unique import FOREVER, Unique, UniqueMode

DEFAULT_QUEUE = "default"
# Django's Tasks framework uses the same range and direction, so its priorities map one to one.
MIN_PRIORITY = -100
MAX_PRIORITY = 100
DEFAULT_PRIORITY = 0
# 2**31 - 1: the largest value an ``integer`` column holds.
MAX_INT = 2_147_483_647

# Lengths in bytes of UTF-8 (for ASCII, in characters). A btree entry holds about 2,700 bytes
# and the unique indexes pair a name with a key: (job_type, idempotency_key) and (name,
# idempotency_key); the queue is also the NOTIFY payload (under 8,000 bytes).
MAX_NAME_BYTES = 255
"""The longest job type, queue, step key, workflow or schedule name, in bytes of UTF-8."""
MAX_IDEMPOTENCY_KEY_BYTES = 1024
"""The longest idempotency key, in bytes of UTF-8; hash a longer natural key."""
_LIMITS = {
    "job_type": MAX_NAME_BYTES,
    "queue": MAX_NAME_BYTES,
    "step_key": MAX_NAME_BYTES,
    "name": MAX_NAME_BYTES,
    "schedule": MAX_NAME_BYTES,
    "idempotency_key": MAX_IDEMPOTENCY_KEY_BYTES,
    "concurrency_key": MAX_IDEMPOTENCY_KEY_BYTES,
}

# PostgreSQL stores timestamps from 4713 BC to 294276 AD, but psycopg reads them into Python's
# datetime (years 1 to 9999) in the session's time zone: a day's margin at each end keeps
# every stored start readable from any time zone.
MIN_RUN_AT = datetime.datetime(1, 1, 2, tzinfo=datetime.UTC)
"""The earliest ``run_at`` accepted."""
MAX_RUN_AT = datetime.datetime(9999, 12, 30, tzinfo=datetime.UTC)
"""The latest ``run_at`` accepted."""
MAX_DELAY = datetime.timedelta(days=365_000)
"""The longest ``delay`` accepted (about 1,000 years): far from ``MAX_RUN_AT`` for centuries."""


def check_job_type(job_type: object, *, step_key: str | None = None) -> None:
    """Raise ``BlankJobType`` unless ``job_type`` is a non-blank str; then ``check_text``."""
    if not isinstance(job_type, str):
        raise BlankJobType(step_key=step_key, given=type(job_type).__name__)
    if not job_type.strip():
        raise BlankJobType(step_key=step_key)
    check_text("job_type", job_type, step_key=step_key)


def check_queue(queue: object, *, step_key: str | None = None) -> None:
    """Raise ``BlankQueue`` unless ``queue`` is a non-blank str; then ``check_text``."""
    if not isinstance(queue, str) or not queue.strip():
        raise BlankQueue(step_key=step_key)
    check_text("queue", queue, step_key=step_key)


def check_priority(priority: object, *, step_key: str | None = None) -> None:
    """Raise ``PriorityOutOfRange`` unless ``priority`` is an int in the allowed range."""
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not MIN_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise PriorityOutOfRange(
            value=priority, minimum=MIN_PRIORITY, maximum=MAX_PRIORITY, step_key=step_key
        )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT


def check_max_attempts(value: object, *, step_key: str | None = None) -> None:
    """Raise ``InvalidMaxAttempts`` unless ``value`` is None or a positive int."""
    if value is not None and not _positive_int(value):
        raise InvalidMaxAttempts(value=value, step_key=step_key)


def check_timeout(value: object, *, step_key: str | None = None) -> None:
    """Raise ``InvalidTimeout`` unless ``value`` is None or a positive int of seconds."""
    if value is not None and not _positive_int(value):
        raise InvalidTimeout(value=value, step_key=step_key)


def check_idempotency_key(value: object, *, step_key: str | None = None) -> None:
    """Raise ``BlankIdempotencyKey`` unless ``value`` is None or a non-blank str that passes
    ``check_text``."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise BlankIdempotencyKey(step_key=step_key)
    if value is not None:
        check_text("idempotency_key", value, step_key=step_key)


def check_text(field: str, value: str, *, step_key: str | None = None) -> None:
    """Raise unless PostgreSQL can store ``value`` as the ``field`` setting.

    Raises:
        NulInText: it holds a NUL character, which PostgreSQL text cannot.
        SurrogateInText: it holds a lone surrogate, which UTF-8 cannot encode.
        TextTooLong: it is longer than the field's limit (``MAX_NAME_BYTES`` for names,
            ``MAX_IDEMPOTENCY_KEY_BYTES`` for keys; other fields have none).
    """
    if "\x00" in value:
        raise NulInText(field=field, step_key=step_key)
    if value.isascii():  # O(1) in CPython: one byte a character, no surrogate
        length = len(value)
    else:
        position = first_surrogate(value)
        if position is not None:
            raise SurrogateInText(field=field, position=position, step_key=step_key)
        length = len(value.encode())
    limit = _LIMITS.get(field)
    if limit is not None and length > limit:
        raise TextTooLong(field=field, length=length, limit=limit, step_key=step_key)


def check_run_at(run_at: datetime.datetime) -> None:
    """Raise ``RunAtOutOfRange`` unless the aware ``run_at`` is within the accepted range."""
    # Comparing aware datetimes subtracts their offsets without overflowing.
    if not MIN_RUN_AT <= run_at <= MAX_RUN_AT:
        raise RunAtOutOfRange(run_at=run_at, minimum=MIN_RUN_AT, maximum=MAX_RUN_AT)


_MAX_DELAY_SECONDS = MAX_DELAY.total_seconds()


def _delay_seconds(delay: object) -> float:
    if isinstance(delay, datetime.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        try:
            seconds = float(delay)
        except OverflowError:
            raise InvalidDelay(delay=delay, maximum=MAX_DELAY) from None
    else:
        raise InvalidDelay(delay=delay, maximum=MAX_DELAY)
    if not 0 <= seconds <= _MAX_DELAY_SECONDS:  # also refuses NaN
        raise InvalidDelay(delay=delay, maximum=MAX_DELAY)
    return seconds


@attrs.frozen
class Job:
    """One job to enqueue: its type, JSON payload and options.

    ``Job("email.send", {"to": "a@b.c"}, queue="mail")``. Validated on construction, so an
    invalid ``Job`` cannot exist; raises a ``JobOptionError`` subclass naming the mistake.

    Attributes:
        job_type: the handler name a registry maps to a function; non-blank, at most
            ``MAX_NAME_BYTES`` bytes of UTF-8 (as is ``queue``).
        payload: plain JSON (see ``runledger.core.payload``); None stores ``{}``.
        queue: the queue workers subscribe to; None takes the handler's queue when enqueue
            is given a registry, else ``"default"``.
        priority: -100..100, higher runs first among due jobs; default 0.
        run_at: a timezone-aware time before which the job does not start, from
            ``MIN_RUN_AT`` to ``MAX_RUN_AT`` (years 1 to 9999).
        delay: seconds (or a timedelta) from the enqueue transaction's clock, at most
            ``MAX_DELAY``; not with run_at.
        max_attempts: attempts before the job is dead-lettered; None takes the handler's
            default when the job is claimed.
        timeout_seconds: the limit of one attempt; None takes the handler's default.
        idempotency_key: the same (job_type, key) enqueued again returns the existing job;
            at most ``MAX_IDEMPOTENCY_KEY_BYTES`` bytes of UTF-8.
        unique: for how long the key returns its job (``runledger.Unique``): as long as the
            job is in the ledger (``Unique.forever()``, the default), while it is queued or
            running (``Unique.active()``), or for a period from its enqueue
            (``Unique.within(timedelta(hours=1))``). Needs ``idempotency_key``.
        concurrency_key: the job starts only while fewer than ``concurrency_limit`` jobs with
            this key are running, across all runtimes (``docs/flow-control.md``); None takes
            the handler's key when enqueue is given a registry. At most
            ``MAX_IDEMPOTENCY_KEY_BYTES`` bytes of UTF-8.
        concurrency_limit: a positive int, with a key; None takes the handler's limit, else
            ``DEFAULT_CONCURRENCY_LIMIT`` (1).
    """

    job_type: str
    payload: JsonValue = None
    queue: str | None = attrs.field(default=None, kw_only=True)
    priority: int = attrs.field(default=DEFAULT_PRIORITY, kw_only=True)
    run_at: datetime.datetime | None = attrs.field(default=None, kw_only=True)
    delay: datetime.timedelta | float | None = attrs.field(default=None, kw_only=True)
    max_attempts: int | None = attrs.field(default=None, kw_only=True)
    timeout_seconds: int | None = attrs.field(default=None, kw_only=True)
    idempotency_key: str | None = attrs.field(default=None, kw_only=True)
    unique: Unique = attrs.field(default=FOREVER, kw_only=True)
    concurrency_key: str | None = attrs.field(default=None, kw_only=True)
    concurrency_limit: int | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        check_job_type(self.job_type)
        check_json(self.payload)
        if self.queue is not None:
            check_queue(self.queue)
        check_priority(self.priority)
        if self.run_at is not None:
            if not isinstance(self.run_at, datetime.datetime):
                raise NaiveRunAt(run_at=self.run_at)
            if self.run_at.tzinfo is None or self.run_at.utcoffset() is None:
                raise NaiveRunAt(run_at=self.run_at)
            if self.delay is not None:
                raise ConflictingRunAt(run_at=self.run_at, delay=self.delay)
            check_run_at(self.run_at)
        if self.delay is not None:
            _delay_seconds(self.delay)
        check_max_attempts(self.max_attempts)
        check_timeout(self.timeout_seconds)
        check_idempotency_key(self.idempotency_key)
        check_unique(self.unique, self.idempotency_key)
        if self.concurrency_key is not None or self.concurrency_limit is not None:
            # core.limits builds on this module's checks, so it is imported here
            from runledger.core.limits import check_concurrency

            check_concurrency(self.concurrency_key, self.concurrency_limit)

    @property
    def stored_payload(self) -> JsonValue:
        """The payload as stored: ``{}`` when none was given."""
        return {} if self.payload is None else self.payload

    @property
    def delay_seconds(self) -> float | None:
        """``delay`` in seconds, or None."""
        return None if self.delay is None else _delay_seconds(self.delay)

    def fingerprint(self) -> str:
        """A digest of what makes two keyed requests "the same request".

        Covers type, payload, queue, priority, max_attempts, timeout, unique window and
        concurrency key; not the start time, since a client retrying "in 10 minutes" a minute
        later asks for the same job.
        """
        return fingerprint(
            {
                "job_type": self.job_type,
                "payload": self.stored_payload,
                "queue": self.queue,
                "priority": self.priority,
                "max_attempts": self.max_attempts,
                "timeout_seconds": self.timeout_seconds,
                **self.unique.request_part(),
                **concurrency_request_part(self.concurrency_key, self.concurrency_limit),
            }
        )


def check_unique(unique: object, idempotency_key: str | None) -> None:
    """Raise ``InvalidUnique`` unless ``unique`` is a ``Unique``, and a window other than the
    default comes with an idempotency key."""
    if not isinstance(unique, Unique):
        raise InvalidUnique(given=unique, reason="expected a runledger.Unique")
    if unique.mode is not UniqueMode.FOREVER and idempotency_key is None:
        raise InvalidUnique(given=unique, reason="it needs an idempotency_key")


def concurrency_request_part(key: str | None, limit: int | None) -> dict[str, Any]:
    """What a concurrency key adds to a keyed request's fingerprint: nothing without one, so
    that keys enqueued before concurrency keys existed still match the same request."""
    return {} if key is None else {"concurrency_key": key, "concurrency_limit": limit}


def fingerprint(request: Any) -> str:
    """The SHA-256 hex digest of a request's canonical JSON."""
    return hashlib.sha256(dumps(request).encode()).hexdigest()
