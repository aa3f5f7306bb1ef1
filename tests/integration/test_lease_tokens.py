"""Lease tokens are time-ordered (UUIDv7 layout), so job_attempts' unique index grows at its
right edge instead of taking random pages; they stay unique and unguessable in their low bits."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

import runledger
from tests.integration.test_workflow_engine import claim_jobs


def _millis(token: uuid.UUID) -> int:
    return token.int >> 80


def test_claimed_tokens_are_version_7_and_led_by_the_claims_milliseconds(
    conn: psycopg.Connection[Any],
) -> None:
    runledger.enqueue_many(conn, [runledger.Job("t", {"n": n}) for n in range(200)])
    conn.commit()
    before = time.time_ns() // 1_000_000

    first = claim_jobs(conn, ["t"], limit=100)
    second = claim_jobs(conn, ["t"], limit=100)
    after = time.time_ns() // 1_000_000

    tokens = [job.lease_token for job in first + second]
    assert len(set(tokens)) == 200
    assert all(t.version == 7 and t.variant == uuid.RFC_4122 for t in tokens)
    # Server and test share the machine's clock; a second of slack covers its resolution.
    assert all(before - 1_000 <= _millis(t) <= after + 1_000 for t in tokens)
    assert max(_millis(j.lease_token) for j in first) <= min(_millis(j.lease_token) for j in second)


def test_time_ordered_uuid_gives_distinct_values(conn: psycopg.Connection[Any]) -> None:
    made = [
        row[0]
        for row in conn.execute(
            "select runledger.time_ordered_uuid() from generate_series(1, 10000)"
        ).fetchall()
    ]
    assert len(set(made)) == 10_000
    assert {t.version for t in made} == {7}
