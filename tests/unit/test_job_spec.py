"""runledger.core.job.Job: construction, validation errors and their fields, fingerprint."""

from __future__ import annotations

import datetime
from typing import Any

import attrs
import pytest

from runledger.core.errors import (
    BlankIdempotencyKey,
    BlankJobType,
    BlankQueue,
    ConflictingRunAt,
    InvalidDelay,
    InvalidMaxAttempts,
    InvalidTimeout,
    JobOptionError,
    NaiveRunAt,
    PayloadNotSerializable,
    PriorityOutOfRange,
    RunledgerError,
)
from runledger.core.job import MAX_INT, MAX_PRIORITY, MIN_PRIORITY, Job

AWARE = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def job_error(**kwargs: Any) -> JobOptionError:
    """Construct a Job expecting a JobOptionError that is also a ValueError and RunledgerError."""
    kwargs.setdefault("job_type", "t")
    with pytest.raises(JobOptionError) as info:
        Job(**kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, RunledgerError)
    assert error.step_key is None
    return error


# --- construction -----------------------------------------------------------------------------


def test_positional_job_type_and_payload_with_defaults() -> None:
    job = Job("email.send", {"a": 1})
    assert job.job_type == "email.send"
    assert job.payload == {"a": 1}
    assert job.stored_payload == {"a": 1}
    assert job.queue is None  # resolved at enqueue: the handler's queue, else "default"
    assert job.priority == 0
    assert job.run_at is None
    assert job.delay is None
    assert job.delay_seconds is None
    assert job.max_attempts is None
    assert job.timeout_seconds is None
    assert job.idempotency_key is None


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Job("t", {}, "mail")  # type: ignore[misc]


def test_all_options_are_kept() -> None:
    job = Job(
        "t",
        [1, "two"],
        queue="mail",
        priority=-5,
        run_at=AWARE,
        max_attempts=4,
        timeout_seconds=60,
        idempotency_key="k",
    )
    assert (job.queue, job.priority, job.run_at) == ("mail", -5, AWARE)
    assert (job.max_attempts, job.timeout_seconds, job.idempotency_key) == (4, 60, "k")
    assert job.stored_payload == [1, "two"]


def test_no_payload_is_stored_as_an_empty_object() -> None:
    job = Job("t")
    assert job.payload is None
    assert job.stored_payload == {}
    assert Job("t", None).stored_payload == {}


@pytest.mark.parametrize("payload", [0, "", [], False, {}])
def test_falsy_payloads_are_stored_as_given(payload: Any) -> None:
    stored = Job("t", payload).stored_payload
    assert stored == payload
    assert type(stored) is type(payload)


def test_job_is_frozen() -> None:
    job = Job("t")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.queue = "other"  # type: ignore[misc]


def test_payload_is_checked() -> None:
    with pytest.raises(PayloadNotSerializable) as info:
        Job("t", {"when": [datetime.date(2024, 1, 1)]})
    assert isinstance(info.value, JobOptionError)
    assert info.value.path == "$.when[0]"
    assert info.value.type_name == "datetime.date"
    assert info.value.step_key is None


# --- job type and queue -----------------------------------------------------------------------


@pytest.mark.parametrize("job_type", ["", "   ", "\n\t", None, 5, b"t"])
def test_blank_or_non_str_job_type(job_type: Any) -> None:
    assert type(job_error(job_type=job_type)) is BlankJobType


@pytest.mark.parametrize(("job_type", "given"), [("  ", None), (5, "int"), (None, "NoneType")])
def test_a_bad_job_type_names_what_was_given(job_type: Any, given: str | None) -> None:
    error = job_error(job_type=job_type)
    assert isinstance(error, BlankJobType)
    assert error.given == given
    assert str(error).endswith("non-blank string" if given is None else f", got {given}")


def test_a_job_passed_as_a_job_type_says_how_to_queue_it() -> None:
    error = job_error(job_type=Job("t"))
    assert isinstance(error, BlankJobType)
    assert error.given == "Job"
    assert "enqueue_many(conn, [job])" in str(error)


@pytest.mark.parametrize("queue", ["", "  ", 1])
def test_blank_queue(queue: Any) -> None:
    assert type(job_error(queue=queue)) is BlankQueue


@pytest.mark.parametrize("queue", [None, "default", "mail"])
def test_queue_may_be_left_out_or_named(queue: str | None) -> None:
    assert Job("t", queue=queue).queue == queue


# --- priority ---------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [MIN_PRIORITY, -1, 0, 1, MAX_PRIORITY])
def test_priority_within_bounds(priority: int) -> None:
    assert Job("t", priority=priority).priority == priority


@pytest.mark.parametrize("priority", [-101, 101, -(10**9), 10**9, True, False, 1.0, "1", None])
def test_priority_out_of_range(priority: Any) -> None:
    error = job_error(priority=priority)
    assert type(error) is PriorityOutOfRange
    assert isinstance(error, PriorityOutOfRange)
    assert error.value == priority
    assert type(error.value) is type(priority)
    assert (error.minimum, error.maximum) == (-100, 100)


# --- run_at and delay -------------------------------------------------------------------------


def test_naive_run_at() -> None:
    naive = datetime.datetime(2030, 1, 2, 3, 4, 5)
    error = job_error(run_at=naive)
    assert type(error) is NaiveRunAt
    assert isinstance(error, NaiveRunAt)
    assert error.run_at == naive


class _NoOffset(datetime.tzinfo):
    """A tzinfo that does not know its offset: the datetime is still naive."""

    def utcoffset(self, dt: datetime.datetime | None) -> None:
        return None

    def tzname(self, dt: datetime.datetime | None) -> None:
        return None

    def dst(self, dt: datetime.datetime | None) -> None:
        return None


@pytest.mark.parametrize(
    "run_at",
    [datetime.datetime(2030, 1, 1, tzinfo=_NoOffset()), "2030-01-01T00:00:00+00:00"],
    ids=["tzinfo-without-offset", "string"],
)
def test_run_at_that_is_not_an_aware_datetime(run_at: Any) -> None:
    error = job_error(run_at=run_at)
    assert type(error) is NaiveRunAt
    assert isinstance(error, NaiveRunAt)
    assert error.run_at is run_at


@pytest.mark.parametrize(
    "run_at",
    [
        AWARE,
        datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
    ],
)
def test_aware_run_at(run_at: datetime.datetime) -> None:
    job = Job("t", run_at=run_at)
    assert job.run_at == run_at
    assert job.delay_seconds is None


def test_run_at_with_delay_conflicts() -> None:
    error = job_error(run_at=AWARE, delay=5)
    assert type(error) is ConflictingRunAt
    assert isinstance(error, ConflictingRunAt)
    assert (error.run_at, error.delay) == (AWARE, 5)


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (2.5, 2.5),
        (datetime.timedelta(0), 0.0),
        (datetime.timedelta(minutes=2, milliseconds=500), 120.5),
        (datetime.timedelta(days=1), 86_400.0),
    ],
)
def test_delay_seconds(delay: Any, seconds: float) -> None:
    job = Job("t", delay=delay)
    assert job.delay == delay
    assert job.delay_seconds == seconds
    assert type(job.delay_seconds) is float


@pytest.mark.parametrize(
    "delay",
    [
        -1,
        -0.001,
        datetime.timedelta(seconds=-1),
        float("nan"),
        float("inf"),
        float("-inf"),
        "5",
        True,
        object(),
        [5],
    ],
    ids=[
        "neg-int",
        "neg-float",
        "neg-timedelta",
        "nan",
        "inf",
        "-inf",
        "str",
        "bool",
        "object",
        "list",
    ],
)
def test_invalid_delay(delay: Any) -> None:
    error = job_error(delay=delay)
    assert type(error) is InvalidDelay
    assert isinstance(error, InvalidDelay)
    assert error.delay is delay


def test_delay_too_large_for_a_float_is_an_invalid_delay() -> None:
    error = job_error(delay=10**400)
    assert type(error) is InvalidDelay


# --- max_attempts, timeout, idempotency key ---------------------------------------------------


@pytest.mark.parametrize(
    ("option", "error_class"),
    [
        ("max_attempts", InvalidMaxAttempts),
        ("timeout_seconds", InvalidTimeout),
    ],
)
@pytest.mark.parametrize("value", [0, -1, True, 1.5, 2.0, "3", MAX_INT + 1])
def test_invalid_max_attempts_and_timeout(
    option: str, error_class: type[JobOptionError], value: Any
) -> None:
    error = job_error(**{option: value})
    assert type(error) is error_class
    assert isinstance(error, InvalidMaxAttempts | InvalidTimeout)
    assert error.value == value
    assert type(error.value) is type(value)


@pytest.mark.parametrize("option", ["max_attempts", "timeout_seconds"])
@pytest.mark.parametrize("value", [1, 30, MAX_INT])
def test_valid_max_attempts_and_timeout(option: str, value: int) -> None:
    assert getattr(Job("t", **{option: value}), option) == value


@pytest.mark.parametrize("key", ["", "   ", 7])
def test_blank_idempotency_key(key: Any) -> None:
    assert type(job_error(idempotency_key=key)) is BlankIdempotencyKey


# --- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_hex() -> None:
    first = Job("t", {"a": 1, "b": [1, 2]}, queue="q", priority=3)
    second = Job("t", {"b": [1, 2], "a": 1}, queue="q", priority=3)
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 64
    int(first.fingerprint(), 16)


def test_fingerprint_ignores_start_time_and_idempotency_key() -> None:
    base = Job("t", {"a": 1}).fingerprint()
    assert Job("t", {"a": 1}, run_at=AWARE).fingerprint() == base
    assert Job("t", {"a": 1}, delay=600).fingerprint() == base
    assert Job("t", {"a": 1}, delay=datetime.timedelta(minutes=9)).fingerprint() == base
    assert Job("t", {"a": 1}, idempotency_key="k").fingerprint() == base


def test_fingerprint_treats_no_payload_as_empty_object() -> None:
    assert Job("t").fingerprint() == Job("t", {}).fingerprint()


def test_fingerprint_changes_with_the_request() -> None:
    variants = [
        Job("t", {"a": 1}),
        Job("t", {"a": 2}),
        Job("t", {"a": 1.5}),
        Job("t", {"a": "1"}),
        Job("t", [{"a": 1}]),
        Job("t2", {"a": 1}),
        Job("t", {"a": 1}, queue="q"),
        Job("t", {"a": 1}, priority=1),
        Job("t", {"a": 1}, priority=-1),
        Job("t", {"a": 1}, max_attempts=3),
        Job("t", {"a": 1}, timeout_seconds=3),
    ]
    fingerprints = [job.fingerprint() for job in variants]
    assert len(set(fingerprints)) == len(variants)
