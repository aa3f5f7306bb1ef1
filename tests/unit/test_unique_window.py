"""Unique windows: validation, and what a window adds to a keyed request's fingerprint."""

from __future__ import annotations

import datetime

import pytest

import runledger
from runledger import Unique
from runledger.errors import InvalidUnique

ACTIVE = Unique.active()


def test_a_window_needs_a_key_and_a_positive_period() -> None:
    with pytest.raises(InvalidUnique):
        runledger.Job("u", {}, unique=ACTIVE)
    with pytest.raises(InvalidUnique):
        Unique.within(0)
    with pytest.raises(InvalidUnique):
        Unique.within(datetime.timedelta(seconds=-1))
    with pytest.raises(InvalidUnique):
        Unique.within("1h")  # type: ignore[arg-type]
    with pytest.raises(InvalidUnique):
        runledger.Job("u", {}, idempotency_key="k", unique="active")  # type: ignore[arg-type]
    assert isinstance(InvalidUnique(given=1, reason="r"), ValueError)
    # The default needs no key, and within() takes seconds as well as a timedelta.
    assert runledger.Job("u", {}, unique=Unique.forever()).unique == Unique.forever()
    assert Unique.within(90).period == datetime.timedelta(seconds=90)


def test_the_default_window_keeps_the_fingerprint_keys_were_stored_with() -> None:
    plain = runledger.Job("u", {"n": 1}, idempotency_key="k")
    assert (
        plain.fingerprint()
        == runledger.Job("u", {"n": 1}, idempotency_key="k", unique=Unique.forever()).fingerprint()
    )
    assert (
        plain.fingerprint()
        != runledger.Job("u", {"n": 1}, idempotency_key="k", unique=ACTIVE).fingerprint()
    )


def test_a_window_holds_by_status_or_by_time() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    hour = Unique.within(datetime.timedelta(hours=1))
    old = now - datetime.timedelta(hours=2)
    assert Unique.forever().holds(holder_live=False, holder_created_at=old, now=now)
    assert ACTIVE.holds(holder_live=True, holder_created_at=old, now=now)
    assert not ACTIVE.holds(holder_live=False, holder_created_at=now, now=now)
    assert hour.holds(holder_live=False, holder_created_at=now, now=now)
    assert not hour.holds(holder_live=True, holder_created_at=old, now=now)
    assert not hour.holds(holder_live=True, holder_created_at=now - hour.period, now=now)
