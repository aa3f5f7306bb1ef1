"""Bad input gets a clear, typed error and loses nothing; odd but valid input is stored verbatim."""

from __future__ import annotations

import datetime
import decimal
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import pq

import runledger
from runledger.errors import (
    BlankJobType,
    ConnectionNotUsable,
    NaiveRunAt,
    NulInText,
    PayloadNotSerializable,
    RunledgerError,
    TransactionAborted,
)

Counter = Callable[..., int]

IDLE = pq.TransactionStatus.IDLE
INERROR = pq.TransactionStatus.INERROR

SQLISH = "x'); drop table runledger.jobs; --"


class Opaque:
    """An arbitrary object: not JSON."""


@pytest.mark.parametrize(
    ("payload", "path", "type_name"),
    [
        ({"tags": {"a", "b"}}, "$.tags", "set"),
        ({"blob": b"\x00\x01"}, "$.blob", "bytes"),
        ({"items": [1, {"obj": Opaque()}]}, "$.items[1].obj", f"{__name__}.Opaque"),
        ({"when": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)}, "$.when", "datetime"),
        ({"amount": decimal.Decimal("1.5")}, "$.amount", "decimal.Decimal"),
        ({"id": uuid.UUID(int=1)}, "$.id", "uuid.UUID"),
    ],
    ids=["set", "bytes", "object", "datetime", "decimal", "uuid"],
)
def test_non_json_payload_is_refused_naming_its_path_and_nothing_is_sent(
    conn: psycopg.Connection[Any], count: Counter, payload: Any, path: str, type_name: str
) -> None:
    with pytest.raises(PayloadNotSerializable) as single:
        runledger.enqueue(conn, "t", payload)
    with pytest.raises(PayloadNotSerializable) as many:
        runledger.enqueue_many(conn, [runledger.Job("t"), runledger.Job("t", payload)])

    for raised in (single.value, many.value):
        assert raised.path == path
        assert type_name in raised.type_name
        assert raised.step_key is None
    # Refused before any statement: the connection did not even start a transaction.
    assert conn.info.transaction_status == IDLE
    assert count("jobs") == 0


def test_non_json_step_payload_is_refused_naming_step_and_path(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    builder = runledger.WorkflowBuilder("w").step(
        "a", job="t", payload={"when": datetime.date(2030, 1, 1)}
    )

    with pytest.raises(PayloadNotSerializable) as raised:
        runledger.enqueue_workflow(conn, builder.build())

    assert (raised.value.path, raised.value.step_key) == ("$.when", "a")
    assert count("workflow_runs") == 0


@pytest.mark.parametrize(
    "run_at",
    [datetime.datetime(2030, 1, 1, 12, 0), datetime.datetime.now()],
    ids=["fixed", "now"],
)
def test_naive_run_at_is_refused_and_nothing_is_written(
    conn: psycopg.Connection[Any], count: Counter, run_at: datetime.datetime
) -> None:
    with pytest.raises(NaiveRunAt) as raised:
        runledger.enqueue(conn, "t", run_at=run_at)
    with pytest.raises(NaiveRunAt):
        runledger.enqueue_many(conn, [runledger.Job("t", run_at=run_at)])

    assert raised.value.run_at == run_at
    assert conn.info.transaction_status == IDLE
    assert count("jobs") == 0


def test_a_job_passed_to_enqueue_is_refused_with_the_call_that_takes_it(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    job = runledger.Job("t")
    with pytest.raises(BlankJobType, match=r"enqueue_many\(conn, \[job\]\)"):
        runledger.enqueue(conn, job)  # type: ignore[arg-type]

    assert conn.info.transaction_status == IDLE
    assert count("jobs") == 0


def test_closed_connection_is_refused_as_not_usable(conn: psycopg.Connection[Any]) -> None:
    conn.close()
    workflow = runledger.WorkflowBuilder("w").step("a", job="t").build()

    with pytest.raises(ConnectionNotUsable):
        runledger.enqueue(conn, "t")
    with pytest.raises(ConnectionNotUsable):
        runledger.enqueue_many(conn, [runledger.Job("t")])
    with pytest.raises(ConnectionNotUsable):
        runledger.enqueue_workflow(conn, workflow)
    with pytest.raises(ConnectionNotUsable):
        runledger.get_job(conn, uuid.uuid4())


def test_connection_killed_by_the_server_is_reported_as_not_usable(
    dsn: str, observer: psycopg.Connection[Any], count: Counter
) -> None:
    with psycopg.connect(dsn) as victim:
        pid = victim.info.backend_pid
        observer.execute("select pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 30
        while observer.execute(
            "select count(*) from pg_stat_activity where pid = %s", (pid,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backend did not exit"

        with pytest.raises(ConnectionNotUsable) as raised:
            runledger.enqueue(victim, "t")

    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
    assert count("jobs") == 0


def test_connection_in_failed_transaction_raises_transaction_aborted_and_writes_nothing(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    runledger.enqueue(conn, "earlier.in.transaction")
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("select 1/0")
    assert conn.info.transaction_status == INERROR
    workflow = runledger.WorkflowBuilder("w").step("a", job="t").build()

    with pytest.raises(TransactionAborted):
        runledger.enqueue(conn, "t")
    with pytest.raises(TransactionAborted):
        runledger.enqueue_many(conn, [runledger.Job("t")])
    with pytest.raises(TransactionAborted):
        runledger.enqueue_workflow(conn, workflow)

    assert conn.info.transaction_status == INERROR  # left for the caller to roll back
    conn.rollback()
    assert count("jobs") == 0
    assert count("workflow_runs") == 0
    assert count("events") == 0
    runledger.enqueue(conn, "after.rollback")
    conn.commit()
    assert count("jobs") == 1


def test_sql_looking_strings_are_stored_verbatim(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any]
) -> None:
    payload = {"note": SQLISH, SQLISH: "key too", "quote": "'\"\\;"}

    job_id = runledger.enqueue(conn, SQLISH, payload, queue=SQLISH, idempotency_key=SQLISH)
    again = runledger.enqueue(conn, SQLISH, payload, queue=SQLISH, idempotency_key=SQLISH)
    conn.commit()

    assert again == job_id
    row = observer.execute(
        "select job_type, queue, idempotency_key, payload from runledger.jobs where id = %s",
        (job_id,),
    ).fetchone()
    assert row == (SQLISH, SQLISH, SQLISH, payload)
    assert observer.execute("select to_regclass('runledger.jobs') is not null").fetchone() == (
        True,
    )
    assert observer.execute("select count(*) from runledger.jobs").fetchone() == (1,)


def test_sql_looking_workflow_names_and_step_keys_are_stored_verbatim(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any]
) -> None:
    workflow = (
        runledger.WorkflowBuilder(SQLISH)
        .idempotency_key(SQLISH)
        .step(SQLISH, job=SQLISH)
        .step("next", job="t", after=SQLISH)
        .build()
    )

    run_id = runledger.enqueue_workflow(conn, workflow)
    conn.commit()

    run = runledger.get_workflow_run(observer, run_id)
    assert (run.name, run.idempotency_key) == (SQLISH, SQLISH)
    assert [s.step_key for s in run.steps] == [SQLISH, "next"]
    assert run.step(SQLISH).job_type == SQLISH
    assert [(e.step_key, e.prerequisite_key) for e in run.edges] == [("next", SQLISH)]


def test_one_megabyte_payload_round_trips_through_get_job(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any]
) -> None:
    payload = {
        "blob": "x" * 1_000_000,
        "unicode": "zażółć gęślą jaźń 🚀 ✓",
        "numbers": list(range(5_000)),
        "nested": {"a": [{"b": None, "c": True, "d": 1.5}]},
    }

    job_id = runledger.enqueue(conn, "big", payload)
    conn.commit()

    assert runledger.get_job(observer, job_id).payload == payload


def test_text_with_nul_character_is_refused_before_the_database_and_writes_nothing(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    earlier = runledger.enqueue(conn, "earlier")
    with pytest.raises(NulInText) as job_type:
        runledger.enqueue(conn, "bad\x00type")
    with pytest.raises(NulInText) as key:
        runledger.enqueue(conn, "t", idempotency_key="bad\x00key")
    with pytest.raises(NulInText) as queue:
        runledger.enqueue(conn, "t", queue="q\x00")
    with pytest.raises(PayloadNotSerializable):
        runledger.WorkflowBuilder("w").step("a", job="t", payload={"a": "x\x00y"}).build()

    assert (job_type.value.field, key.value.field, queue.value.field) == (
        "job_type",
        "idempotency_key",
        "queue",
    )
    assert conn.info.transaction_status != INERROR
    conn.commit()
    assert count("jobs") == 1
    assert count("jobs", "id = %s", (earlier,)) == 1


def test_workflow_refused_by_the_database_keeps_the_callers_transaction_usable(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    # A constraint the database enforces but runledger does not check first.
    conn.execute("alter table runledger.workflow_runs add constraint test_no_w check (name <> 'w')")
    conn.commit()
    earlier = runledger.enqueue(conn, "earlier")
    workflow = runledger.WorkflowBuilder("w").step("a", job="t").build()

    with pytest.raises(RunledgerError):
        runledger.enqueue_workflow(conn, workflow)

    assert conn.info.transaction_status != INERROR
    conn.commit()
    assert count("jobs", "id = %s", (earlier,)) == 1
    assert count("workflow_runs") == 0


def test_enqueue_many_with_a_nul_in_a_payload_is_refused_and_keeps_the_transaction_usable(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    earlier = runledger.enqueue(conn, "earlier")

    with pytest.raises(PayloadNotSerializable) as caught:
        runledger.enqueue_many(conn, [runledger.Job("t"), runledger.Job("t", {"a": "x\x00y"})])
    assert caught.value.path == "$.a"

    assert conn.info.transaction_status != INERROR
    conn.commit()
    assert count("jobs", "id = %s", (earlier,)) == 1
    assert count("jobs", "job_type = 't'") == 0
