"""A finish of a few attempts runs as a prepared statement (its generic plan fits and saves
planning); a large one is planned for its size; a connection that disables prepared
statements (PgBouncer in transaction mode) never gets one."""

from __future__ import annotations

from typing import Any

import psycopg

import runledger
from runledger.postgres.attempts import PREPARED_FINISH_BATCH, finish
from runledger.runtime import outcome
from tests.integration.test_workflow_engine import claim_jobs

# FINISH_ATTEMPTS under either of its texts
PREPARED_FINISHES = """
select count(*) from pg_prepared_statements
where statement like '%as u(id, token, status, outcome, output%'
"""


def finish_batches(conn: psycopg.Connection[Any], size: int, times: int) -> None:
    """Claim and finish ``times`` batches of ``size`` jobs, checking each is written."""
    runledger.enqueue_many(conn, [runledger.Job("t")] * (size * times))
    conn.commit()
    for _ in range(times):
        claimed = claim_jobs(conn, ["t"], limit=size)
        report = finish(conn, [outcome.success(job, {"ok": True}) for job in claimed])
        conn.commit()
        assert len(report.finished) == size and not report.lost


def succeeded(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from runledger.jobs where status = 'succeeded'").fetchone()
    assert row is not None
    return int(row[0])


def prepared_finishes(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(PREPARED_FINISHES).fetchone()
    assert row is not None
    return int(row[0])


def test_small_finishes_are_prepared_after_the_connections_threshold(
    conn: psycopg.Connection[Any],
) -> None:
    assert conn.prepare_threshold is not None
    finish_batches(conn, 1, conn.prepare_threshold + 2)
    finish_batches(conn, PREPARED_FINISH_BATCH, 2)

    assert prepared_finishes(conn) == 1
    assert succeeded(conn) == conn.prepare_threshold + 2 + 2 * PREPARED_FINISH_BATCH


def test_large_finishes_are_never_prepared(conn: psycopg.Connection[Any]) -> None:
    assert conn.prepare_threshold is not None
    finish_batches(conn, PREPARED_FINISH_BATCH + 1, conn.prepare_threshold + 2)

    assert prepared_finishes(conn) == 0
    assert succeeded(conn) == (PREPARED_FINISH_BATCH + 1) * (conn.prepare_threshold + 2)


def test_no_prepared_finish_where_the_connection_disables_them(dsn: str) -> None:
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        finish_batches(conn, 1, 10)

        assert prepared_finishes(conn) == 0
        assert succeeded(conn) == 10
