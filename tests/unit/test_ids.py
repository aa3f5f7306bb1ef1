"""Time-ordered ids: version 7, unique and increasing within a process, one at a time or bulk."""

from __future__ import annotations

import itertools
import time
import uuid

from runledger.postgres.ids import new_id, new_ids


def test_bulk_ids_are_version_7_and_rfc_variant() -> None:
    for made in new_ids(100):
        assert made.version == 7
        assert made.variant == uuid.RFC_4122


def test_bulk_and_single_ids_interleave_strictly_increasing() -> None:
    made = [new_id(), *new_ids(5000), new_id(), *new_ids(3), new_id()]
    assert len(made) == 5_006
    assert all(a < b for a, b in itertools.pairwise(made))
    assert len(set(made)) == len(made)


def test_more_ids_than_one_millisecond_holds_stay_increasing() -> None:
    # 12 bits of sequence hold 4,096 ids per millisecond; the rest carry into the clock.
    made = new_ids(10_000)
    assert all(a < b for a, b in itertools.pairwise(made))


def test_ids_carry_the_current_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= made.int >> 80 <= after + 1


def test_bulk_of_zero_is_empty() -> None:
    assert new_ids(0) == []
