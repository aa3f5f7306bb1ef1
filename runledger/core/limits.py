"""Flow-control settings: a job's concurrency key and limit, and a queue's limits.

Pure validation, shared by ``Job``, workflow steps, handler defaults and
``runledger.set_queue_limits``; the claim enforces them in PostgreSQL.
"""

from __future__ import annotations

import math

from runledger.core.errors import InvalidConcurrencyKey, InvalidQueueLimit
from runledger.core.job import MAX_INT, check_text

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
