"""``runledger status``: queued, running and recently failed jobs per queue, as a table and
as JSON. (Its empty, unmigrated and unreachable cases are in tests/runtime/test_cli_worker.py.)
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from console import Cli, Ledger, ok, parse_table

import runledger


def _mixed_queues(conn: psycopg.Connection[Any], ledger: Ledger) -> None:
    """default: 2 queued (1 due, 1 in an hour), 1 running, 1 failed just now, 1 failed long
    ago; mail: 1 queued."""
    runledger.enqueue(conn, "report.build")
    runledger.enqueue(conn, "report.build", delay=3600)
    runledger.enqueue(conn, "email.send", queue="mail")
    runledger.enqueue(conn, "charge")
    ledger.claim("charge")
    for job_type in ("import.fresh", "import.stale"):
        runledger.enqueue(conn, job_type)
        ledger.fail(ledger.claim(job_type), retry=False)
    conn.execute(
        "update runledger.jobs set finished_at = now() - interval '2 hours' "
        "where job_type = 'import.stale'"
    )
    runledger.enqueue(conn, "old.news")
    ledger.succeed(ledger.claim("old.news"))


def test_status_table_counts_queued_running_and_failed_in_the_last_hour(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    _mixed_queues(autocommit_conn, ledger)

    rows = parse_table(ok(cli("status")))

    assert [(r["QUEUE"], r["STATUS"], r["JOBS"]) for r in rows] == [
        ("default", "failed (last 1h)", "1"),
        ("default", "queued", "2"),
        ("default", "running", "1"),
        ("mail", "queued", "1"),
    ]
    by_status = {(r["QUEUE"], r["STATUS"]): r for r in rows}
    assert by_status["default", "queued"]["OLDEST DUE"].endswith("s")
    assert by_status["default", "running"]["OLDEST DUE"] == ""
    assert by_status["default", "failed (last 1h)"]["JOB TYPES"] == "import.fresh"
    assert by_status["default", "queued"]["JOB TYPES"] == "report.build"


def test_status_json_lists_the_same_groups_with_numbers(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    _mixed_queues(autocommit_conn, ledger)

    entries = json.loads(ok(cli("status", "--json")))

    assert {(e["queue"], e["status"]): e["jobs"] for e in entries} == {
        ("default", "failed"): 1,
        ("default", "queued"): 2,
        ("default", "running"): 1,
        ("mail", "queued"): 1,
    }
    queued = next(e for e in entries if (e["queue"], e["status"]) == ("default", "queued"))
    assert isinstance(queued["oldest_due_seconds"], float)
    assert queued["job_types"] == ["report.build"]
