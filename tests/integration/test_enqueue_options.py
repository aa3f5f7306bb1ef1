"""enqueue options as stored: queue, priority, start time, attempts, timeout, registry defaults."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger.errors import UnknownJobType

Counter = Callable[..., int]


def _job_row(conn: psycopg.Connection[Any], job_id: object, columns: str) -> tuple[Any, ...]:
    row = conn.execute(f"select {columns} from runledger.jobs where id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


def _registry() -> runledger.Registry:
    registry = runledger.Registry()

    @registry.handler("t", queue="mail", max_attempts=7, timeout_seconds=9)
    def handle(ctx: object, payload: object) -> None:
        return None

    return registry


def test_queue_and_priority_are_stored(conn: psycopg.Connection[Any]) -> None:
    job_id = runledger.enqueue(conn, "t", queue="mail", priority=-42)

    assert _job_row(conn, job_id, "queue, priority") == ("mail", -42)


def test_defaults_are_default_queue_priority_zero_and_no_attempt_limits(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = runledger.enqueue(conn, "t")

    assert _job_row(conn, job_id, "queue, priority, attempt, max_attempts, timeout_seconds") == (
        "default",
        0,
        0,
        None,
        None,
    )


def test_no_start_time_runs_at_the_enqueue_transactions_clock(
    conn: psycopg.Connection[Any],
) -> None:
    job_id = runledger.enqueue(conn, "t")

    assert _job_row(conn, job_id, "run_at = now()") == (True,)


@pytest.mark.parametrize("delay", [90, 90.5, datetime.timedelta(minutes=1, seconds=30.5)])
def test_delay_sets_run_at_to_the_database_clock_plus_delay(
    conn: psycopg.Connection[Any], delay: float | datetime.timedelta
) -> None:
    seconds = delay.total_seconds() if isinstance(delay, datetime.timedelta) else float(delay)

    job_id = runledger.enqueue(conn, "t", delay=delay)

    # now() is the transaction's start time: the clock enqueue used, read back exactly.
    row = conn.execute(
        "select run_at - now() from runledger.jobs where id = %s", (job_id,)
    ).fetchone()
    assert row == (datetime.timedelta(seconds=seconds),)


def test_aware_run_at_is_stored_exactly(conn: psycopg.Connection[Any]) -> None:
    india = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    run_at = datetime.datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=india)

    job_id = runledger.enqueue(conn, "t", run_at=run_at)

    (stored,) = _job_row(conn, job_id, "run_at")
    assert stored == run_at
    assert stored.utcoffset() is not None


def test_max_attempts_and_timeout_are_stored(conn: psycopg.Connection[Any]) -> None:
    job_id = runledger.enqueue(conn, "t", max_attempts=4, timeout_seconds=120)

    assert _job_row(conn, job_id, "max_attempts, timeout_seconds") == (4, 120)


def test_none_payload_is_stored_as_empty_object(conn: psycopg.Connection[Any]) -> None:
    first = runledger.enqueue(conn, "t")
    second = runledger.enqueue(conn, "t", None)
    (third,) = runledger.enqueue_many(conn, [runledger.Job("t")])

    for job_id in (first, second, third):
        assert _job_row(conn, job_id, "payload, jsonb_typeof(payload)") == ({}, "object")


def test_registry_defaults_apply_when_the_job_gives_none(conn: psycopg.Connection[Any]) -> None:
    registry = _registry()

    job_id = runledger.enqueue(conn, "t", registry=registry)
    (many_id,) = runledger.enqueue_many(conn, [runledger.Job("t")], registry=registry)

    for found in (job_id, many_id):
        assert _job_row(conn, found, "queue, max_attempts, timeout_seconds") == ("mail", 7, 9)


def test_job_options_override_registry_defaults(conn: psycopg.Connection[Any]) -> None:
    job_id = runledger.enqueue(
        conn, "t", queue="urgent", max_attempts=2, timeout_seconds=3, registry=_registry()
    )

    assert _job_row(conn, job_id, "queue, max_attempts, timeout_seconds") == ("urgent", 2, 3)


def test_unknown_job_type_with_registry_raises_and_writes_nothing(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    registry = _registry()

    with pytest.raises(UnknownJobType) as raised:
        runledger.enqueue(conn, "nope", registry=registry)
    with pytest.raises(UnknownJobType):
        runledger.enqueue_many(conn, [runledger.Job("t"), runledger.Job("nope")], registry=registry)

    assert raised.value.job_type == "nope"
    assert raised.value.known == ("t",)
    assert raised.value.step_key is None
    conn.commit()
    assert count("jobs") == 0
    assert count("events") == 0
