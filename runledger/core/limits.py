"""Flow-control settings: a job's concurrency key and limit, and a queue's limits.

Pure validation, shared by ``Job``, workflow steps, handler defaults and
``runledger.set_queue_limits``; the claim enforces them in PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from runledger.core.errors import ConfigError, InvalidConcurrencyKey, InvalidQueueLimit
from runledger.core.job import MAX_INT, check_queue, check_text

DEFAULT_CONCURRENCY_LIMIT = 1
"""How many jobs with one concurrency key may run at once when the key is given alone."""

MAX_PER_SECONDS = 86_400.0 * 365
"""The longest rate window accepted (a year)."""


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_INT


def check_concurrency(key: object, limit: object, *, step_key: str | None = None) -> None:
    """Raise ``InvalidConcurrencyKey`` unless ``key`` is None or a non-blank str that
    PostgreSQL can store, and ``limit`` is None or a positive int given with a key."""
    if key is None:
        if limit is not None:
            raise InvalidConcurrencyKey(
                key=key, limit=limit, reason="a concurrency_limit needs a concurrency_key",
                step_key=step_key,
            )  # fmt: skip
        return
    if not isinstance(key, str) or not key.strip():
        raise InvalidConcurrencyKey(
            key=key, limit=limit, reason="the key must be a non-blank string", step_key=step_key
        )
    check_text("concurrency_key", key, step_key=step_key)
    if limit is not None and not _positive_int(limit):
        raise InvalidConcurrencyKey(
            key=key, limit=limit, reason="the limit must be a positive integer",
            step_key=step_key,
        )  # fmt: skip


def check_queue_limits(queue: str, *, concurrency: object, rate: object, per: object) -> None:
    """Raise ``InvalidQueueLimit`` unless ``concurrency`` and ``rate`` are each None or a
    positive int and ``per`` is a positive number of seconds (at most ``MAX_PER_SECONDS``)."""
    for field, value in (("concurrency", concurrency), ("rate", rate)):
        if value is not None and not _positive_int(value):
            raise InvalidQueueLimit(
                queue=queue, field=field, value=value, reason="must be a positive integer or None"
            )
    if (
        isinstance(per, bool)
        or not isinstance(per, int | float)
        or not math.isfinite(per)
        or not 0 < per <= MAX_PER_SECONDS
    ):
        raise InvalidQueueLimit(
            queue=queue, field="per", value=per,
            reason=f"must be a number of seconds above 0 and at most {MAX_PER_SECONDS:,.0f}",
        )  # fmt: skip


@attrs.frozen(kw_only=True)
class QueueLimits:
    """A queue's limits as a framework setting states them (``RUNLEDGER_QUEUE_LIMITS``)."""

    concurrency: int | None = None
    rate: int | None = None
    per: float = 1.0


_LIMIT_KEYS = frozenset({"concurrency", "rate", "per"})
_EXPECTED = (
    'a mapping of queue name to its limits, e.g. {"mail": {"concurrency": 5, "rate": 100, '
    '"per": 60}}'
)


def parse_queue_limits(value: object, *, name: str) -> dict[str, QueueLimits]:
    """The limits a ``RUNLEDGER_QUEUE_LIMITS`` setting (``name``) states, by queue.

    Raises:
        ConfigError: it is not a mapping of queue names to mappings with only the keys
            ``concurrency``, ``rate`` and ``per``.
        InvalidQueueLimit: a limit is out of range.
        BlankQueue / TextTooLong: a queue name is invalid.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(name=name, value=value, expected=_EXPECTED)
    parsed: dict[str, QueueLimits] = {}
    for queue, limits in value.items():
        check_queue(queue)
        if not isinstance(limits, Mapping) or not set(limits) <= _LIMIT_KEYS:
            raise ConfigError(name=f"{name}[{queue!r}]", value=limits, expected=_EXPECTED)
        concurrency, rate = limits.get("concurrency"), limits.get("rate")
        per = limits.get("per", 1.0)
        check_queue_limits(queue, concurrency=concurrency, rate=rate, per=per)
        parsed[queue] = QueueLimits(concurrency=concurrency, rate=rate, per=float(per))
    return parsed
