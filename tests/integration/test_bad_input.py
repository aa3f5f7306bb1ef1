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
from runledger.core.job import (
    MAX_DELAY,
    MAX_IDEMPOTENCY_KEY_BYTES,
    MAX_NAME_BYTES,
    MAX_RUN_AT,
    MIN_RUN_AT,
)
from runledger.core.payload import MAX_PAYLOAD_BYTES
from runledger.errors import (
    BlankJobType,
    ConfigError,
    ConnectionNotUsable,
    InvalidDelay,
    InvalidId,
    NaiveRunAt,
    NulInText,
    PayloadNotSerializable,
    PayloadTooLarge,
    RunAtOutOfRange,
    RunledgerError,
    SchemaNotMigrated,
    SurrogateInText,
    TextTooLong,
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


# --- inputs the database would refuse: each is refused first, with a typed error -------------
# After each refusal the caller's transaction must still take statements and commit.

WEST_12 = datetime.timezone(-datetime.timedelta(hours=12))
LONE = "\ud800"  # a lone surrogate: a Python str can hold it, UTF-8 cannot


def still_usable(conn: psycopg.Connection[Any], count: Counter, earlier: uuid.UUID) -> None:
    """The caller's transaction takes another statement and commits the job written before."""
    assert conn.info.transaction_status != INERROR
    assert conn.execute("select 1").fetchone() == (1,)
    conn.commit()
    assert count("jobs", "id = %s", (earlier,)) == 1


def many(job: runledger.Job, copy: bool) -> list[runledger.Job]:
    """``job`` last in a batch large enough for the COPY path, or in a small one."""
    return [*[runledger.Job("t") for _ in range(99 if copy else 1)], job]


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda c: runledger.enqueue(c, "t", {"a": [{"b": LONE}]}), PayloadNotSerializable, None),
        (lambda c: runledger.enqueue(c, "t", {LONE: 1}), PayloadNotSerializable, None),
        (lambda c: runledger.enqueue(c, f"t{LONE}"), SurrogateInText, "job_type"),
        (lambda c: runledger.enqueue(c, "t", queue=LONE), SurrogateInText, "queue"),
        (lambda c: runledger.enqueue(c, "t", idempotency_key=LONE), SurrogateInText,
         "idempotency_key"),
        (lambda c: runledger.enqueue_many(c, many(runledger.Job("t", [LONE]), copy=True)),
         PayloadNotSerializable, None),
        (lambda c: runledger.enqueue_many(c, many(runledger.Job("t", [LONE]), copy=False)),
         PayloadNotSerializable, None),
        (lambda c: runledger.list_jobs(c, queue=LONE), SurrogateInText, "queue"),
        (lambda c: runledger.cancel_job(c, uuid.uuid4(), reason=LONE), SurrogateInText,
         "reason"),
    ],
    ids=["payload-value", "payload-key", "job_type", "queue", "key", "many-copy", "many",
         "list_jobs", "cancel-reason"],
)  # fmt: skip
def test_a_lone_surrogate_is_refused_and_the_transaction_stays_usable(
    conn: psycopg.Connection[Any],
    count: Counter,
    call: Callable[[psycopg.Connection[Any]], object],
    error: type[Exception],
    field: str | None,
) -> None:
    earlier = runledger.enqueue(conn, "earlier")

    with pytest.raises(error) as raised:
        call(conn)

    if field is not None:
        assert getattr(raised.value, "field") == field  # noqa: B009
    still_usable(conn, count, earlier)
    assert count("jobs") == 1


def test_a_lone_surrogate_in_a_workflow_or_an_external_signal_is_refused(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    workflow = runledger.WorkflowBuilder("w").step("wait").external().build()
    run_id = runledger.enqueue_workflow(conn, workflow)
    earlier = runledger.enqueue(conn, "earlier")

    with pytest.raises(PayloadNotSerializable) as output:
        runledger.complete_external_step(conn, run_id, "wait", output={"x": LONE})
    with pytest.raises(SurrogateInText) as reason:
        runledger.fail_external_step(conn, run_id, "wait", reason=LONE)
    with pytest.raises(SurrogateInText) as step_key:
        runledger.complete_external_step(conn, run_id, LONE)
    with pytest.raises(PayloadNotSerializable):
        runledger.WorkflowBuilder("w2").input({"i": LONE}).step("a", job="t").build()

    assert output.value.path == "$output.x"
    assert (reason.value.field, step_key.value.field) == ("reason", "step_key")
    still_usable(conn, count, earlier)
    assert runledger.get_workflow_run(conn, run_id).step("wait").status == "waiting"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"queue": "q" * 10_000}, "queue"),  # NOTIFY payload string too long
        ({"queue": "q" * 7_000}, "queue"),  # index row size exceeds btree maximum
        ({"idempotency_key": "k" * 10_000}, "idempotency_key"),
        ({"job_type": "t" * 10_000}, "job_type"),
    ],
    ids=["queue-10000", "queue-7000", "key-10000", "type-10000"],
)
@pytest.mark.parametrize("path", ["enqueue", "many", "many-copy"])
def test_a_name_or_key_too_long_is_refused_and_the_transaction_stays_usable(
    conn: psycopg.Connection[Any], count: Counter, options: dict[str, Any], field: str, path: str
) -> None:
    earlier = runledger.enqueue(conn, "earlier")
    options = dict(options)
    job_type = options.pop("job_type", "t")

    with pytest.raises(TextTooLong) as raised:
        if path == "enqueue":
            runledger.enqueue(conn, job_type, **options)
        else:
            runledger.enqueue_many(
                conn, many(runledger.Job(job_type, **options), copy=path == "many-copy")
            )

    assert raised.value.field == field
    assert raised.value.limit in (MAX_NAME_BYTES, MAX_IDEMPOTENCY_KEY_BYTES)
    still_usable(conn, count, earlier)
    assert count("jobs") == 1


def incompressible(size: int, seed: int) -> str:
    """``size`` bytes of 4-byte characters PostgreSQL cannot compress (at least 4 bytes)."""
    import random

    rand = random.Random(seed)
    return "".join(chr(rand.randrange(0x10000, 0x10FFFF)) for _ in range(size // 4))


def test_names_and_keys_at_the_limits_are_stored_and_read_back(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any]
) -> None:
    # Incompressible text is the worst case for a btree entry (long values are compressed).
    job_type, queue = incompressible(MAX_NAME_BYTES, 1), incompressible(MAX_NAME_BYTES, 2)
    key = incompressible(MAX_IDEMPOTENCY_KEY_BYTES, 3)
    step_key, name = incompressible(MAX_NAME_BYTES, 4), incompressible(MAX_NAME_BYTES, 5)

    job_id = runledger.enqueue(conn, job_type, queue=queue, idempotency_key=key)
    again = runledger.enqueue(conn, job_type, queue=queue, idempotency_key=key)
    run_id = runledger.enqueue_workflow(
        conn,
        runledger.WorkflowBuilder(name)
        .idempotency_key(key)
        .step(step_key, job=job_type, queue=queue)
        .build(),
    )
    conn.commit()

    assert again == job_id
    job = runledger.get_job(observer, job_id)
    assert (job.job_type, job.queue, job.idempotency_key) == (job_type, queue, key)
    run = runledger.get_workflow_run(observer, run_id)
    assert (run.name, run.idempotency_key, run.steps[0].step_key) == (name, key, step_key)


@pytest.mark.parametrize(
    ("builder", "field"),
    [
        (runledger.WorkflowBuilder("w" * 10_000).step("a", job="t"), "name"),
        (runledger.WorkflowBuilder("w").idempotency_key("k" * 10_000).step("a", job="t"),
         "idempotency_key"),
        (runledger.WorkflowBuilder("w").step("a" * 10_000, job="t"), "step_key"),
        (runledger.WorkflowBuilder("w").step("a", job="t" * 10_000), "job_type"),
        (runledger.WorkflowBuilder("w").step("a", job="t", queue="q" * 10_000), "queue"),
    ],
    ids=["name", "key", "step_key", "job_type", "queue"],
)  # fmt: skip
def test_a_workflow_with_a_name_too_long_is_refused_at_build(
    builder: runledger.WorkflowBuilder, field: str
) -> None:
    with pytest.raises(TextTooLong) as raised:
        builder.build()
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"delay": 1e300}, InvalidDelay),
        ({"delay": datetime.timedelta.max}, InvalidDelay),
        ({"delay": MAX_DELAY * 2}, InvalidDelay),
        ({"run_at": datetime.datetime.max.replace(tzinfo=WEST_12)}, RunAtOutOfRange),
        ({"run_at": MAX_RUN_AT + datetime.timedelta(seconds=1)}, RunAtOutOfRange),
    ],
    ids=["1e300", "timedelta.max", "twice-max", "datetime.max-12h", "after-max"],
)  # fmt: skip
@pytest.mark.parametrize("path", ["enqueue", "many", "many-copy"])
def test_a_start_time_out_of_range_is_refused_and_the_transaction_stays_usable(
    conn: psycopg.Connection[Any],
    count: Counter,
    options: dict[str, Any],
    error: type[Exception],
    path: str,
) -> None:
    earlier = runledger.enqueue(conn, "earlier")

    with pytest.raises(error):
        if path == "enqueue":
            runledger.enqueue(conn, "t", **options)
        else:
            runledger.enqueue_many(conn, many(runledger.Job("t", **options), copy=path != "many"))

    still_usable(conn, count, earlier)
    assert count("jobs") == 1


@pytest.mark.parametrize("path", ["enqueue", "many-copy"])
def test_start_times_at_the_ends_of_the_range_are_stored_and_read_back(
    conn: psycopg.Connection[Any], observer: psycopg.Connection[Any], path: str
) -> None:
    # Read back in the time zones furthest from UTC, where the ends overflow first.
    jobs = [
        runledger.Job("late", run_at=MAX_RUN_AT),
        runledger.Job("early", run_at=MIN_RUN_AT),
        runledger.Job("delayed", delay=MAX_DELAY),
    ]
    if path == "enqueue":
        ids = [runledger.enqueue_many(conn, [job])[0] for job in jobs]
    else:
        ids = runledger.enqueue_many(conn, [*jobs, *many(runledger.Job("t"), copy=True)])[:3]
    conn.commit()

    for zone in ("Pacific/Kiritimati", "Etc/GMT+12", "UTC"):
        observer.execute(f"set timezone to '{zone}'")
        late, early, delayed = (runledger.get_job(observer, i) for i in ids)
        assert late.run_at == MAX_RUN_AT
        assert early.run_at == MIN_RUN_AT
        assert delayed.run_at > datetime.datetime.now(datetime.UTC) + MAX_DELAY / 2


def _bad_id_calls() -> list[Any]:
    return [
        pytest.param(runledger.get_job, "job_id", id="get_job"),
        pytest.param(runledger.list_attempts, "job_id", id="list_attempts"),
        pytest.param(lambda c, v: runledger.list_events(c, job_id=v), "job_id", id="events-job"),
        pytest.param(lambda c, v: runledger.list_events(c, run_id=v), "run_id", id="events-run"),
        pytest.param(
            lambda c, v: runledger.list_jobs(c, workflow_run_id=v), "workflow_run_id",
            id="list_jobs",
        ),
        pytest.param(runledger.get_workflow_run, "run_id", id="get_run"),
        pytest.param(runledger.cancel_job, "job_id", id="cancel_job"),
        pytest.param(runledger.cancel_workflow, "run_id", id="cancel_run"),
        pytest.param(runledger.requeue, "job_id", id="requeue"),
        pytest.param(
            lambda c, v: runledger.complete_external_step(c, v, "s"), "run_id", id="complete"
        ),
        pytest.param(
            lambda c, v: runledger.fail_external_step(c, v, "s", "r"), "run_id", id="fail"
        ),
    ]  # fmt: skip


@pytest.mark.parametrize(("call", "field"), _bad_id_calls())
@pytest.mark.parametrize("value", ["not-a-uuid", 42], ids=["text", "int"])
def test_an_id_that_is_not_a_uuid_is_refused_and_the_transaction_stays_usable(
    conn: psycopg.Connection[Any],
    count: Counter,
    call: Callable[[psycopg.Connection[Any], Any], object],
    field: str,
    value: object,
) -> None:
    earlier = runledger.enqueue(conn, "earlier")

    with pytest.raises(InvalidId) as raised:
        call(conn, value)

    assert (raised.value.field, raised.value.value) == (field, value)
    still_usable(conn, count, earlier)


def test_an_id_given_as_text_is_accepted(conn: psycopg.Connection[Any]) -> None:
    job_id = runledger.enqueue(conn, "t")
    run_id = runledger.enqueue_workflow(
        conn, runledger.WorkflowBuilder("w").step("wait").external().build()
    )

    assert runledger.get_job(conn, str(job_id)).id == job_id  # type: ignore[arg-type]
    assert runledger.get_workflow_run(conn, str(run_id)).id == run_id  # type: ignore[arg-type]
    assert runledger.complete_external_step(conn, str(run_id), "wait")  # type: ignore[arg-type]
    assert runledger.cancel_job(conn, str(job_id))  # type: ignore[arg-type]
    with pytest.raises(runledger.errors.JobNotFound) as missing:
        runledger.requeue(conn, str(uuid.UUID(int=1)))  # type: ignore[arg-type]
    assert missing.value.job_id == uuid.UUID(int=1)


def _unmigrated_calls() -> list[Any]:
    workflow = runledger.WorkflowBuilder("w").step("a", job="t").build()
    return [
        pytest.param(lambda c: runledger.enqueue(c, "t"), id="enqueue"),
        pytest.param(lambda c: runledger.enqueue(c, "t", idempotency_key="k"),
                     id="enqueue-key"),
        pytest.param(lambda c: runledger.enqueue_many(c, many(runledger.Job("t"), copy=False)),
                     id="many"),
        pytest.param(lambda c: runledger.enqueue_many(c, many(runledger.Job("t"), copy=True)),
                     id="many-copy"),
        pytest.param(lambda c: runledger.get_job(c, uuid.uuid4()), id="get_job"),
        pytest.param(runledger.list_jobs, id="list_jobs"),
        pytest.param(lambda c: runledger.get_workflow_run(c, uuid.uuid4()),
                     id="get_workflow_run"),
        pytest.param(lambda c: runledger.enqueue_workflow(c, workflow), id="workflow"),
        pytest.param(lambda c: runledger.cancel_job(c, uuid.uuid4()), id="cancel_job"),
        pytest.param(lambda c: runledger.cancel_workflow(c, uuid.uuid4()),
                     id="cancel_workflow"),
        pytest.param(lambda c: runledger.requeue(c, uuid.uuid4()), id="requeue"),
        pytest.param(lambda c: runledger.complete_external_step(c, uuid.uuid4(), "s"),
                     id="complete_external_step"),
    ]  # fmt: skip


@pytest.mark.parametrize("call", _unmigrated_calls())
def test_a_database_never_migrated_raises_schema_not_migrated(
    empty_database: str,
    call: Callable[[psycopg.Connection[Any]], object],
) -> None:
    with psycopg.connect(empty_database) as conn:
        conn.execute("create table app_rows (id int)")

        with pytest.raises(SchemaNotMigrated) as raised:
            call(conn)

        assert raised.value.found is None
        # Told by a read before any statement that would abort the caller's transaction.
        conn.execute("insert into app_rows values (1)")
        conn.commit()
        assert conn.execute("select count(*) from app_rows").fetchone() == (1,)


def test_a_database_never_migrated_on_autocommit_raises_schema_not_migrated(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as conn:
        with pytest.raises(SchemaNotMigrated):
            runledger.enqueue(conn, "t")
        assert conn.info.transaction_status == IDLE
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_payload_over_the_limit_is_refused_before_sending(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    earlier = runledger.enqueue(conn, "earlier")
    huge = {"blob": "x" * (50 * 1024 * 1024)}

    with pytest.raises(PayloadTooLarge) as single:
        runledger.enqueue(conn, "t", huge)
    with pytest.raises(PayloadTooLarge) as batch:
        runledger.enqueue_many(conn, many(runledger.Job("t", huge), copy=True))
    with pytest.raises(PayloadTooLarge) as small_batch:
        runledger.enqueue_many(conn, many(runledger.Job("t", huge), copy=False))

    for raised in (single.value, batch.value, small_batch.value):
        assert raised.limit == MAX_PAYLOAD_BYTES
        assert raised.size == len(runledger_dumps(huge).encode())
        assert raised.path == "$"
    still_usable(conn, count, earlier)
    assert count("jobs") == 1


def runledger_dumps(value: Any) -> str:
    from runledger.core.payload import dumps

    return dumps(value)


def test_the_payload_limit_can_be_set_per_call_and_by_environment(
    conn: psycopg.Connection[Any], count: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = {"s": "x" * 100}
    size = len(runledger_dumps(payload).encode())

    with pytest.raises(PayloadTooLarge) as per_call:
        runledger.enqueue(conn, "t", payload, max_payload_bytes=size - 1)
    runledger.enqueue(conn, "t", payload, max_payload_bytes=size)
    runledger.enqueue_many(conn, [runledger.Job("t", payload)], max_payload_bytes=size)
    monkeypatch.setenv("RUNLEDGER_MAX_PAYLOAD_BYTES", str(size - 1))
    with pytest.raises(PayloadTooLarge) as by_env:
        runledger.enqueue(conn, "t", payload)
    runledger.enqueue(conn, "t", payload, max_payload_bytes=size)  # the call wins
    monkeypatch.setenv("RUNLEDGER_MAX_PAYLOAD_BYTES", "lots")
    with pytest.raises(ConfigError) as bad_env:
        runledger.enqueue(conn, "t", payload)
    with pytest.raises(ConfigError):
        runledger.enqueue(conn, "t", payload, max_payload_bytes=0)

    assert (per_call.value.limit, by_env.value.limit) == (size - 1, size - 1)
    assert bad_env.value.name == "RUNLEDGER_MAX_PAYLOAD_BYTES"
    assert conn.info.transaction_status != INERROR
    conn.commit()
    assert count("jobs") == 3


def test_workflow_payloads_and_external_outputs_over_the_limit_are_refused(
    conn: psycopg.Connection[Any], count: Counter
) -> None:
    big = {"s": "x" * 200}
    with_input = runledger.WorkflowBuilder("w").input(big).step("a", job="t").build()
    with_payload = runledger.WorkflowBuilder("w").step("a", job="t", payload=big).build()
    waiting = runledger.enqueue_workflow(
        conn, runledger.WorkflowBuilder("x").step("wait").external().build()
    )
    earlier = runledger.enqueue(conn, "earlier")

    with pytest.raises(PayloadTooLarge) as run_input:
        runledger.enqueue_workflow(conn, with_input, max_payload_bytes=100)
    with pytest.raises(PayloadTooLarge) as step_payload:
        runledger.enqueue_workflow(conn, with_payload, max_payload_bytes=100)
    with pytest.raises(PayloadTooLarge) as output:
        runledger.complete_external_step(conn, waiting, "wait", output=big, max_payload_bytes=100)

    assert (run_input.value.path, run_input.value.step_key) == ("$input", None)
    assert (step_payload.value.path, step_payload.value.step_key) == ("$", "a")
    assert output.value.path == "$output"
    still_usable(conn, count, earlier)
    assert count("workflow_runs") == 1
