"""The claim runs one generic plan per connection, and that plan stays on indexes whatever
limit it is executed with; the setting that asks for it ends with the claim's transaction."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

import runledger
from runledger import WorkflowBuilder
from runledger.postgres.attempts import (
    CLAIM_JOBS,
    CLAIM_PLAIN,
    CLAIM_PLAIN_STATEMENT,
    DEFAULT_MAX_ATTEMPTS,
    claim,
)

PLAN_COUNTS = """
select generic_plans, custom_plans from pg_prepared_statements where statement = %s
"""
# The claim's parameters by name, with their SQL types, for a PREPARE of its text.
PARAM_TYPES = {
    "queues": "text[]",
    "job_types": "text[]",
    "limit": "bigint",
    "worker": "text",
    "lease_seconds": "float8",
    "defaults": "text",
    "default_max_attempts": "integer",
    "start_now": "bigint",
}


def claim_one(conn: psycopg.Connection[Any]) -> list[Any]:
    jobs = claim(conn, worker="w", queues=["default"], job_types=["t"], limit=1, lease_seconds=30)
    conn.commit()
    return jobs


@pytest.mark.min_server_version(14, reason="pg_prepared_statements counts plans from 14")
def test_the_claim_is_planned_once_per_connection(conn: psycopg.Connection[Any]) -> None:
    assert conn.prepare_threshold is not None
    claims = conn.prepare_threshold + 5
    runledger.enqueue_many(conn, [runledger.Job("t")] * claims)
    conn.commit()

    for _ in range(claims):
        assert len(claim_one(conn)) == 1

    row = conn.execute(PLAN_COUNTS, (CLAIM_PLAIN_STATEMENT.text,)).fetchone()
    assert row is not None
    generic, custom = row
    assert custom == 0
    assert generic == claims - conn.prepare_threshold


def test_the_generic_plan_setting_ends_with_the_claims_transaction(
    conn: psycopg.Connection[Any],
) -> None:
    runledger.enqueue(conn, "t")
    conn.commit()

    claim(conn, worker="w", queues=["default"], job_types=["t"], limit=1, lease_seconds=30)
    inside = conn.execute("show plan_cache_mode").fetchone()
    conn.commit()
    after = conn.execute("show plan_cache_mode").fetchone()

    assert inside == ("force_generic_plan",)
    assert after == ("auto",)


def test_the_claim_is_never_compiled_with_jit(conn: psycopg.Connection[Any]) -> None:
    # The generic plan costs its limit as a tenth of the queued rows: from a few hundred
    # thousand queued its cost passed jit_above_cost and every claim compiled its plan anew.
    runledger.enqueue(conn, "t")
    conn.commit()

    claim(conn, worker="w", queues=["default"], job_types=["t"], limit=1, lease_seconds=30)
    inside = conn.execute("show jit").fetchone()
    conn.commit()
    after = conn.execute("show jit").fetchone()

    assert inside == ("off",)
    assert after == ("on",)


def test_without_prepared_statements_the_claim_leaves_the_setting_alone(dsn: str) -> None:
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        runledger.enqueue(conn, "t")
        conn.commit()
        jobs = claim(
            conn, worker="w", queues=["default"], job_types=["t"], limit=1, lease_seconds=30
        )
        assert len(jobs) == 1
        assert conn.execute("show plan_cache_mode").fetchone() == ("auto",)


@pytest.mark.parametrize("claim_text", [CLAIM_PLAIN, CLAIM_JOBS], ids=["plain", "flow control"])
def test_the_generic_plan_reads_jobs_and_steps_by_index(
    conn: psycopg.Connection[Any], claim_text: str
) -> None:
    # Enough rows that a plan joining the candidates by hash would scan whole tables.
    runledger.enqueue_many(conn, [runledger.Job("t")] * 5_000)
    fan = WorkflowBuilder("fan").step("root", job="t")
    for n in range(4):
        fan = fan.step(f"leaf{n}", job="t", after="root")
    workflow = fan.build()
    for _ in range(1_000):
        runledger.enqueue_workflow(conn, workflow)
    conn.commit()
    conn.autocommit = True
    conn.execute("analyze runledger.jobs, runledger.workflow_runs, runledger.workflow_step_runs")
    conn.autocommit = False
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", claim_text)))
    text = claim_text
    for number, name in enumerate(names, start=1):
        text = text.replace(f"%({name})s", f"${number}")
    types = ", ".join(PARAM_TYPES[name] for name in names)
    values = {
        "queues": "'{default}'", "job_types": "'{t}'", "limit": "16", "defaults": "'{}'",
        "default_max_attempts": str(DEFAULT_MAX_ATTEMPTS), "worker": "'w'",
        "lease_seconds": "30", "start_now": "4",
    }  # fmt: skip
    conn.execute(f"prepare claim_plan ({types}) as {text}")
    conn.execute("set local plan_cache_mode = force_generic_plan")

    plan = "\n".join(
        row[0]
        for row in conn.execute(
            f"explain (costs off) execute claim_plan({', '.join(values[n] for n in names)})"
        ).fetchall()
    )
    conn.rollback()

    assert "Seq Scan on jobs" not in plan, plan
    assert "Seq Scan on workflow_step_runs" not in plan, plan
    assert "Seq Scan on workflow_runs" not in plan, plan
    assert "Index Scan using jobs_pkey" in plan, plan
    # the candidates are read off the runnable index, not found by scanning every queued row
    assert "Index Scan using jobs_runnable" in plan, plan
