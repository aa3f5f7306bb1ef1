"""The pure parts of snooze and progress: validation, the retry decision, the stored progress
shape and its one-line form, and the coalescing of progress reports in the in-flight table."""

from __future__ import annotations

import datetime
import json
import math
import uuid
from typing import Any

import pytest

import runledger
from runledger.core.job import MAX_DELAY
from runledger.core.progress import MAX_PROGRESS_BYTES, describe_progress, progress_json
from runledger.core.retry import RetryPolicy, decide
from runledger.core.status import RetryReason
from runledger.errors import InvalidProgress, InvalidSnooze, RunledgerError
from runledger.runtime.inflight import InFlight, InFlightTable

AT = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("after", "seconds"),
    [(30, 30.0), (0.5, 0.5), (0, 0.0), (datetime.timedelta(minutes=2), 120.0),
     (MAX_DELAY, MAX_DELAY.total_seconds())],
)  # fmt: skip
def test_snooze_takes_seconds_or_a_timedelta(after: Any, seconds: float) -> None:
    assert runledger.Snooze(after=after).seconds == seconds


@pytest.mark.parametrize(
    "after",
    [-1, -0.001, math.nan, math.inf, True, "30", None, datetime.timedelta(seconds=-1),
     MAX_DELAY + datetime.timedelta(seconds=1), 10**400,
     datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)],
)  # fmt: skip
def test_a_bad_snooze_is_refused_with_the_value_and_the_maximum(after: Any) -> None:
    with pytest.raises(InvalidSnooze) as raised:
        runledger.Snooze(after=after)

    assert raised.value.value is after
    assert raised.value.maximum == MAX_DELAY
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, RunledgerError)


def test_a_snooze_is_decided_as_an_uncounted_requeue_even_on_the_last_attempt() -> None:
    decision = decide(
        runledger.Snooze(after=7), attempt=3, max_attempts=3, policy=RetryPolicy(), draw=0.5
    )

    assert (decision.retry, decision.snooze, decision.delay) == (True, True, 7.0)
    assert decision.reason is RetryReason.HANDLER
    retried = decide(runledger.Retry(after=7), attempt=1, max_attempts=3, policy=RetryPolicy(),
                     draw=0.5)  # fmt: skip
    assert not retried.snooze


def test_a_fraction_is_stored_with_its_note_attempt_and_time() -> None:
    stored = json.loads(progress_json(0.4, note="page 4 of 10", attempt=2, at=AT))

    assert stored == {
        "fraction": 0.4, "note": "page 4 of 10", "attempt": 2,
        "at": "2026-01-02T03:04:05+00:00",
    }  # fmt: skip
    assert describe_progress(stored) == "40% page 4 of 10"


@pytest.mark.parametrize("value", [{"pages": 4, "of": [10]}, "warming up", [1, 2], True, None])
def test_any_other_json_value_is_stored_as_given(value: Any) -> None:
    stored = json.loads(progress_json(value, note=None, attempt=1, at=AT))

    assert stored == {"value": value, "attempt": 1, "at": "2026-01-02T03:04:05+00:00"}
    assert describe_progress(stored) == json.dumps(value, separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize(
    ("value", "note", "field"),
    [(-0.1, None, "fraction"), (1.01, None, "fraction"), (2, None, "fraction"),
     (math.nan, None, "fraction"), (math.inf, None, "fraction"), ({1: "x"}, None, "value"),
     ({"when": datetime.date(2026, 1, 1)}, None, "value"), ("a\x00b", None, "value"),
     (0.5, 3, "note"), (0.5, "\x00", "note"), ("x" * MAX_PROGRESS_BYTES, None, "value"),
     (0.5, "y" * MAX_PROGRESS_BYTES, "note")],
)  # fmt: skip
def test_bad_progress_is_refused_naming_the_argument(value: Any, note: Any, field: str) -> None:
    with pytest.raises(InvalidProgress) as raised:
        progress_json(value, note=note, attempt=1, at=AT)

    assert raised.value.field == field
    assert raised.value.value is (note if field == "note" else value)
    assert isinstance(raised.value, ValueError)


def test_the_one_line_form_never_shows_done_before_it_is_and_shows_hand_written_json() -> None:
    assert describe_progress({"fraction": 0.9999}) == "99.9%"
    assert describe_progress({"fraction": 1.0}) == "100%"
    assert describe_progress({"other": 1}) == '{"other":1}'
    assert describe_progress(None) == ""


def _flight(table: InFlightTable) -> InFlight:
    token = uuid.uuid4()
    job: Any = type("Job", (), {"lease_token": token, "id": uuid.uuid4()})()
    flight = InFlight(job=job, ctx=None)  # type: ignore[arg-type]
    table.by_token[token] = flight
    return flight


def test_reports_coalesce_into_the_latest_until_it_is_written() -> None:
    table = InFlightTable()
    flight = _flight(table)
    token = flight.job.lease_token
    assert table.unwritten_progress() == {}

    for n in range(1000):
        table.report_progress(token, f'{{"value": {n}}}')
    pending = table.unwritten_progress()
    assert pending == {token: (1000, '{"value": 999}')}

    table.report_progress(token, '{"value": 1000}')  # reported while the renewal ran
    table.progress_written({token: 1000})
    assert table.unwritten_progress() == {token: (1001, '{"value": 1000}')}
    table.progress_written({token: 1001})
    assert table.unwritten_progress() == {}
    table.progress_written({token: 5})  # an older write never undoes a newer one
    assert table.unwritten_progress() == {}
