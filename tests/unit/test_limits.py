"""The documented limits: text that UTF-8 cannot carry, name and key lengths, start times,
payload sizes and ids, each refused with its own error before anything reaches the database."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest

from runledger.core.errors import (
    InvalidDelay,
    InvalidId,
    JobOptionError,
    PayloadNotSerializable,
    PayloadTooLarge,
    RunAtOutOfRange,
    SurrogateInText,
    TextTooLong,
    ValidationError,
    WorkflowBuildError,
)
from runledger.core.job import (
    MAX_DELAY,
    MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_NAME_BYTES,
    MAX_RUN_AT,
    MIN_RUN_AT,
    Job,
)
from runledger.core.payload import MAX_PAYLOAD_BYTES, check_json, dumps, dumps_within
from runledger.core.workflow import WorkflowBuilder
from runledger.postgres.ids import parse_id

LONE = "\ud800"
FOUR_BYTES = "🚀"  # one character, four bytes of UTF-8


# --- lone surrogates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (f"a{LONE}b", "$"),
        ({"a": [1, {"b": LONE}]}, "$.a[1].b"),
        ({"ok": "é", "k": ("x", f"ü{LONE}")}, "$.k[1]"),
        ({"outer": {f"k{LONE}": 1}}, f"$.outer[{f'k{LONE}'!r}]"),
        ({"pair": "\ud83d\ude80"}, "$.pair"),  # a surrogate pair is two lone surrogates in str
    ],
    ids=["root", "nested", "tuple", "key", "pair"],
)
def test_a_lone_surrogate_in_a_payload_is_refused_naming_its_path(payload: Any, path: str) -> None:
    with pytest.raises(PayloadNotSerializable) as info:
        check_json(payload)
    assert info.value.path == path
    assert "surrogate" in info.value.reason


@pytest.mark.parametrize(
    ("option", "field"),
    [("job_type", "job_type"), ("queue", "queue"), ("idempotency_key", "idempotency_key")],
)
def test_a_lone_surrogate_in_a_job_name_is_refused_naming_the_field(
    option: str, field: str
) -> None:
    kwargs: dict[str, Any] = {"job_type": "t", option: f"x{LONE}"}
    with pytest.raises(SurrogateInText) as info:
        Job(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, JobOptionError)
    assert info.value.step_key is None


@pytest.mark.parametrize(
    ("builder", "field", "step_key"),
    [
        (WorkflowBuilder(f"w{LONE}").step("a", job="t"), "name", None),
        (WorkflowBuilder("w").idempotency_key(LONE).step("a", job="t"), "idempotency_key", None),
        (WorkflowBuilder("w").step(f"a{LONE}", job="t"), "step_key", None),
        (WorkflowBuilder("w").step("a", job=f"t{LONE}"), "job_type", "a"),
        (WorkflowBuilder("w").step("a", job="t", queue=LONE), "queue", "a"),
    ],
    ids=["name", "key", "step_key", "job_type", "queue"],
)
def test_a_lone_surrogate_in_a_workflow_name_is_refused(
    builder: WorkflowBuilder, field: str, step_key: str | None
) -> None:
    with pytest.raises(SurrogateInText) as info:
        builder.build()
    assert (info.value.field, info.value.step_key) == (field, step_key)
    assert isinstance(info.value, WorkflowBuildError)


def test_a_lone_surrogate_in_workflow_input_names_its_path() -> None:
    with pytest.raises(PayloadNotSerializable) as info:
        WorkflowBuilder("w").input({"a": LONE}).step("a", job="t").build()
    assert info.value.path == "$input.a"


def test_text_with_non_ascii_but_no_surrogate_is_accepted() -> None:
    Job("émail.✓", {"ключ": "zażółć 🚀"}, queue="キュー", idempotency_key="ß")


# --- lengths of names and keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "limit"),
    [
        ("job_type", MAX_NAME_BYTES),
        ("queue", MAX_NAME_BYTES),
        ("idempotency_key", MAX_IDEMPOTENCY_KEY_BYTES),
    ],
)
def test_names_and_keys_up_to_the_limit_are_accepted_and_one_byte_more_refused(
    option: str, limit: int
) -> None:
    Job(**{"job_type": "t", option: "x" * limit})
    with pytest.raises(TextTooLong) as info:
        Job(**{"job_type": "t", option: "x" * (limit + 1)})
    assert (info.value.field, info.value.length, info.value.limit) == (option, limit + 1, limit)
    assert isinstance(info.value, JobOptionError)


def test_length_is_measured_in_utf8_bytes() -> None:
    fits = FOUR_BYTES * (MAX_NAME_BYTES // 4)
    Job(fits)
    with pytest.raises(TextTooLong) as info:
        Job(fits + "xx" + "x" * (MAX_NAME_BYTES % 4))
    assert info.value.length == MAX_NAME_BYTES + 2


def test_the_limits_leave_room_in_postgresql_indexes() -> None:
    # (job_type, idempotency_key) and (name, idempotency_key) share one btree entry, whose
    # limit is about 2,700 bytes; the queue is also a NOTIFY payload (under 8,000 bytes).
    assert MAX_NAME_BYTES + MAX_IDEMPOTENCY_KEY_BYTES < 2_600
    assert 100 <= MAX_NAME_BYTES < 8_000


@pytest.mark.parametrize(
    ("builder", "field", "step_key"),
    [
        (WorkflowBuilder("w" * 10_000).step("a", job="t"), "name", None),
        (WorkflowBuilder("w").idempotency_key("k" * 10_000).step("a", job="t"), "idempotency_key",
         None),
        (WorkflowBuilder("w").step("a" * 10_000, job="t"), "step_key", None),
        (WorkflowBuilder("w").step("a", job="t" * 10_000), "job_type", "a"),
        (WorkflowBuilder("w").step("a", job="t", queue="q" * 7_000), "queue", "a"),
    ],
    ids=["name", "key", "step_key", "job_type", "queue"],
)  # fmt: skip
def test_long_workflow_names_are_refused(
    builder: WorkflowBuilder, field: str, step_key: str | None
) -> None:
    with pytest.raises(TextTooLong) as info:
        builder.build()
    assert (info.value.field, info.value.step_key) == (field, step_key)
    assert isinstance(info.value, WorkflowBuildError)
    assert str(info.value.limit) in str(info.value).replace(",", "")


# --- start time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delay",
    [1e300, 10.0**20, datetime.timedelta.max, MAX_DELAY + datetime.timedelta(seconds=1)],
    ids=["1e300", "1e20", "timedelta.max", "just-over"],
)
def test_a_delay_past_the_maximum_is_refused_naming_it(delay: Any) -> None:
    with pytest.raises(InvalidDelay) as info:
        Job("t", delay=delay)
    assert info.value.maximum == MAX_DELAY
    assert info.value.delay is delay


def test_the_maximum_delay_is_accepted() -> None:
    assert Job("t", delay=MAX_DELAY).delay_seconds == MAX_DELAY.total_seconds()
    assert Job("t", delay=MAX_DELAY.total_seconds()).delay_seconds == MAX_DELAY.total_seconds()


@pytest.mark.parametrize(
    "run_at",
    [
        datetime.datetime.max.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=-12))),
        datetime.datetime.max.replace(tzinfo=datetime.UTC),
        datetime.datetime.min.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=14))),
        datetime.datetime.min.replace(tzinfo=datetime.UTC),
        MAX_RUN_AT + datetime.timedelta(microseconds=1),
        MIN_RUN_AT - datetime.timedelta(microseconds=1),
    ],
    ids=["max-12h", "max", "min+14h", "min", "just-after", "just-before"],
)
def test_a_run_at_outside_the_range_is_refused_naming_it(run_at: datetime.datetime) -> None:
    with pytest.raises(RunAtOutOfRange) as info:
        Job("t", run_at=run_at)
    assert (info.value.run_at, info.value.minimum, info.value.maximum) == (
        run_at,
        MIN_RUN_AT,
        MAX_RUN_AT,
    )
    assert isinstance(info.value, JobOptionError)


def test_the_ends_of_the_run_at_range_are_accepted() -> None:
    Job("t", run_at=MAX_RUN_AT)
    Job("t", run_at=MIN_RUN_AT)
    far_east = datetime.timezone(datetime.timedelta(hours=14))
    Job("t", run_at=MAX_RUN_AT.astimezone(far_east))


# --- payload size -------------------------------------------------------------------------------


def test_the_default_payload_limit_is_one_mebibyte() -> None:
    assert MAX_PAYLOAD_BYTES == 1_048_576


def test_a_payload_up_to_the_limit_is_accepted_and_one_byte_more_refused() -> None:
    value = {"s": "x" * 100}
    text = dumps(value)
    size = len(text.encode())

    assert dumps_within(value, limit=size) == text
    with pytest.raises(PayloadTooLarge) as info:
        dumps_within(value, limit=size - 1, root="$input", step_key="a")
    assert (info.value.size, info.value.limit) == (size, size - 1)
    assert (info.value.path, info.value.step_key) == ("$input", "a")
    assert isinstance(info.value, JobOptionError)


def test_payload_size_is_measured_in_utf8_bytes_of_the_json_text() -> None:
    value = [FOUR_BYTES * 10]
    size = len(dumps(value).encode())
    assert size == 2 + 2 + 40
    dumps_within(value, limit=size)
    with pytest.raises(PayloadTooLarge):
        dumps_within(value, limit=size - 1)


# --- ids ----------------------------------------------------------------------------------------


def test_an_id_is_a_uuid_or_its_text() -> None:
    value = uuid.uuid4()
    assert parse_id(value, field="job_id") is value
    assert parse_id(str(value), field="job_id") == value
    assert parse_id(str(value).upper(), field="run_id") == value


@pytest.mark.parametrize(
    "value", ["", "not-a-uuid", "1234", 42, None, b"x" * 16, f"{uuid.uuid4()}x", LONE]
)
def test_anything_else_is_an_invalid_id_naming_the_argument(value: Any) -> None:
    with pytest.raises(InvalidId) as info:
        parse_id(value, field="run_id")
    assert (info.value.field, info.value.value) == ("run_id", value)
    assert isinstance(info.value, ValidationError)
    assert isinstance(info.value, ValueError)
