"""Ids of jobs and runs: time-ordered UUIDs (version 7) for new rows, and the check of given ones.

New rows share the right edge of the index. Ids made by one process are strictly increasing,
so jobs enqueued together (same ``run_at``) are claimed in the order they were given.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

from runledger.core.errors import InvalidId

_lock = threading.Lock()
_last = 0  # the last (millis << 12 | sequence) handed out
# Ids need uniqueness, not secrecy: a generator seeded from the OS (reseeded in forked
# children, which would otherwise repeat the parent's sequence) is ten times cheaper than a
# system call per id.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_id() -> uuid.UUID:
    """A fresh UUIDv7: 48 bits of Unix milliseconds, a 12-bit sequence, 62 random bits."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[uuid.UUID]:
    """``count`` fresh UUIDv7s in increasing order, taking the lock once (bulk enqueue)."""
    global _last  # noqa: PLW0603 - the process-wide monotonic clock of ids
    with _lock:
        rands = [_random.getrandbits(62) for _ in range(count)]
        stamp = (time.time_ns() // 1_000_000) << 12
        first = stamp if stamp > _last else _last + 1
        _last = first + count - 1
    # A sequence past 12 bits carries into the milliseconds: ids stay unique and increasing.
    return [_uuid(_layout(first + offset, rand)) for offset, rand in enumerate(rands)]


def _layout(head: int, rand: int) -> int:
    millis, sequence = head >> 12, head & 0xFFF
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= sequence << 64
    value |= 0b10 << 62  # RFC 4122 variant
    return value | (rand & ((1 << 62) - 1))


def _uuid(value: int) -> uuid.UUID:
    # uuid.UUID(int=...) re-validates its argument, which costs more than making the id;
    # value is a well-formed 128-bit UUIDv7 by construction.
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", uuid.SafeUUID.unknown)
    return made


def parse_id(value: object, *, field: str) -> uuid.UUID:
    """``value`` as a UUID: a ``uuid.UUID`` as it is, or its text in any form ``uuid`` reads.

    Called by every function taking a job or run id, so that a wrong id is refused before
    it reaches the database (which would abort the caller's transaction).

    Raises:
        InvalidId: ``value`` is neither; ``field`` names the argument.
    """
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidId(field=field, value=value)
