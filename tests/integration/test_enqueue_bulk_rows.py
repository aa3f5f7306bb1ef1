"""The bulk (COPY) path of enqueue_many writes exactly the rows enqueue() writes.

``enqueue_many`` formats large batches without idempotency keys as COPY text itself; every
value that COPY text escapes (backslash, tab, newline, carriage return), non-ASCII text, JSON
escapes, SQL-looking text and every option must come back as the one-row INSERT path stores it.
"""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
import pytest

import runledger
from runledger.postgres.enqueue import COPY_THRESHOLD

TRICKY_TEXT = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "'; drop table runledger.jobs; --",
    "ünïcødé ✓ \u2028",
]
TRICKY_PAYLOADS: list[runledger.JsonValue] = [{"s": text} for text in TRICKY_TEXT] + [
    {"nested": {"list": [1, 2.5, -3, True, False, None, "x"]}, "big": 2**62},
    ["a", {"b": "c\\d"}, []],
    "plain string",
    12.75,
    None,
    {"quote": '"', "json_escape": "\\u0041", "control": "\x01\x1f"},
]
ROW = """
select queue, job_type, payload, priority, max_attempts, timeout_seconds,
       run_at - created_at as start_offset, status, attempt
from runledger.jobs where id = %s
"""


def _registry() -> runledger.Registry:
    registry = runledger.Registry()

    @registry.handler("defaults", queue="mail", max_attempts=7, timeout_seconds=9)
    def defaults(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    return registry


def _tricky_jobs() -> list[runledger.Job]:
    utc_plus_5 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    jobs = [runledger.Job(text, {"i": i}, queue=text) for i, text in enumerate(TRICKY_TEXT)]
    jobs += [runledger.Job("payload", payload) for payload in TRICKY_PAYLOADS]
    jobs += [
        runledger.Job("options", priority=-100, max_attempts=3, timeout_seconds=60),
        runledger.Job("options", priority=100),
        runledger.Job("start", run_at=datetime.datetime(2031, 1, 2, 3, 4, 5, 678901, utc_plus_5)),
        runledger.Job("start", delay=90),
        runledger.Job("start", delay=datetime.timedelta(milliseconds=2500)),
    ]
    return jobs


def _row(conn: psycopg.Connection[Any], job_id: Any) -> tuple[Any, ...]:
    row = conn.execute(ROW, (job_id,)).fetchone()
    assert row is not None
    return tuple(row)


def test_bulk_rows_equal_single_rows_for_tricky_values(conn: psycopg.Connection[Any]) -> None:
    jobs = _tricky_jobs()
    filler = [runledger.Job("filler") for _ in range(COPY_THRESHOLD)]

    bulk_ids = runledger.enqueue_many(conn, jobs + filler)[: len(jobs)]
    single_ids = [
        runledger.enqueue(
            conn, job.job_type, job.payload, queue=job.queue, priority=job.priority,
            run_at=job.run_at, delay=job.delay, max_attempts=job.max_attempts,
            timeout_seconds=job.timeout_seconds,
        )
        for job in jobs
    ]  # fmt: skip
    conn.commit()

    for job, bulk_id, single_id in zip(jobs, bulk_ids, single_ids, strict=True):
        assert _row(conn, bulk_id) == _row(conn, single_id), job
    # The values themselves, not just agreement: text and JSON arrive verbatim.
    for text, job_id in zip(TRICKY_TEXT, bulk_ids, strict=False):
        queue, job_type = _row(conn, job_id)[:2]
        assert (queue, job_type) == (text, text)
    payloads = bulk_ids[len(TRICKY_TEXT) : len(TRICKY_TEXT) + len(TRICKY_PAYLOADS)]
    assert [_row(conn, i)[2] for i in payloads] == [{} if p is None else p for p in TRICKY_PAYLOADS]


def test_bulk_rows_take_registry_defaults_like_single_rows(conn: psycopg.Connection[Any]) -> None:
    registry = _registry()
    jobs = [runledger.Job("defaults"), runledger.Job("defaults", queue="own", max_attempts=2)]
    filler = [runledger.Job("defaults") for _ in range(COPY_THRESHOLD)]

    bulk_ids = runledger.enqueue_many(conn, jobs + filler, registry=registry)
    single_ids = [
        runledger.enqueue(
            conn, job.job_type, queue=job.queue, max_attempts=job.max_attempts, registry=registry
        )
        for job in jobs
    ]
    conn.commit()

    assert _row(conn, bulk_ids[0])[:6] == ("mail", "defaults", {}, 0, 7, 9)
    assert _row(conn, bulk_ids[1])[:6] == ("own", "defaults", {}, 0, 2, 9)
    for bulk_id, single_id in zip(bulk_ids, single_ids, strict=False):
        assert _row(conn, bulk_id) == _row(conn, single_id)


def test_bulk_start_times_come_from_the_transaction_clock(conn: psycopg.Connection[Any]) -> None:
    jobs = [runledger.Job("start", delay=90)] + [runledger.Job("now")] * COPY_THRESHOLD
    ids = runledger.enqueue_many(conn, jobs)
    offsets = conn.execute(
        "select run_at - now() from runledger.jobs where id = any(%s) order by id", (ids[:2],)
    ).fetchall()
    assert [row[0] for row in offsets] == [datetime.timedelta(seconds=90), datetime.timedelta(0)]


def test_bulk_unknown_job_type_names_the_first_and_writes_nothing(
    conn: psycopg.Connection[Any],
) -> None:
    registry = _registry()
    jobs = [runledger.Job("defaults")] * COPY_THRESHOLD
    jobs += [runledger.Job("first.unknown"), runledger.Job("second.unknown")]

    with pytest.raises(runledger.errors.UnknownJobType) as raised:
        runledger.enqueue_many(conn, jobs, registry=registry)

    assert raised.value.job_type == "first.unknown"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("select count(*) from runledger.jobs").fetchone() == (0,)
