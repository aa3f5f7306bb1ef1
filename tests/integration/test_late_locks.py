"""retried_in_savepoint: the retry loop cancel_workflow and retry_workflow share."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from runledger.errors import DatabaseError
from runledger.postgres import late_locks
from runledger.postgres.late_locks import LateJobLocked, retried_in_savepoint

Conn = psycopg.Connection[Any]
RUN_ID = uuid.UUID(int=7)


def test_a_late_lock_undoes_the_attempt_to_the_savepoint_and_tries_again(conn: Conn) -> None:
    conn.execute("create temporary table writes (attempt integer)")
    attempts: list[int] = []

    def write() -> str:
        attempts.append(len(attempts) + 1)
        conn.execute("insert into writes values (%s)", (len(attempts),))
        if len(attempts) < 3:
            raise LateJobLocked()
        return "done"

    assert retried_in_savepoint(conn, "t", write, verb="test", run_id=RUN_ID) == "done"
    assert attempts == [1, 2, 3]
    # Only the attempt that succeeded left its write; the caller's transaction is usable.
    assert conn.execute("select attempt from writes").fetchall() == [(3,)]


def test_jobs_locked_past_the_deadline_raise_database_error_naming_the_run(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(late_locks, "RETRY_FOR_SECONDS", 0.05)
    calls = 0

    def write() -> None:
        nonlocal calls
        calls += 1
        raise LateJobLocked()

    with pytest.raises(DatabaseError, match=f"could not cancel run {RUN_ID}"):
        retried_in_savepoint(conn, "t", write, verb="cancel", run_id=RUN_ID)
    assert calls > 1
    assert conn.execute("select 1").fetchone() == (1,)
