"""``runledger status`` names the queued job types no live worker handles, from the real
``runledger.workers`` rows: a live worker consuming the queue with a handler covers a type, a
stale one does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg

import runledger
from runledger.postgres.workers import WorkerInfo, register_worker


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    environ.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "runledger.cli", *args],
        env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _worker(worker_id: str, queues: list[str], handlers: list[str]) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id, host="h", pid=1, version="0", queues=queues, handlers=handlers,
        concurrency=1, lease_seconds=30.0,
    )  # fmt: skip


def test_status_lists_queued_job_types_that_no_live_worker_handles(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    runledger.enqueue(autocommit_conn, "mail.send", queue="mail")
    runledger.enqueue(autocommit_conn, "mail.send", queue="default")
    runledger.enqueue(autocommit_conn, "report.build", queue="default")
    register_worker(autocommit_conn, _worker("live", ["mail"], ["mail.send"]))
    register_worker(autocommit_conn, _worker("stale", ["default"], ["report.build"]))
    autocommit_conn.execute(
        "update runledger.workers set last_seen_at = now() - interval '1 hour' where id = 'stale'"
    )

    text = _cli("status", "--dsn", dsn)
    as_json = _cli("status", "--dsn", dsn, "--json")

    assert text.returncode == 0, text.stderr
    table, section = text.stdout.split("\n\n")
    assert table.splitlines()[0].startswith("QUEUE")
    title, header, row = section.strip().splitlines()
    assert title.startswith("queued job types that no live worker handles (1 live")
    assert header.split() == ["QUEUE", "JOB", "TYPES"]
    assert row.split() == ["default", "mail.send,report.build"]
    assert as_json.returncode == 0, as_json.stderr
    unhandled = {e["queue"]: e["unhandled_job_types"] for e in json.loads(as_json.stdout)}
    assert unhandled == {"default": ["mail.send", "report.build"], "mail": []}


def test_status_prints_no_unhandled_section_when_live_workers_cover_every_queued_type(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    runledger.enqueue(autocommit_conn, "mail.send", queue="mail")
    register_worker(autocommit_conn, _worker("live", ["mail"], ["mail.send"]))

    text = _cli("status", "--dsn", dsn)

    assert text.returncode == 0, text.stderr
    assert "handles" not in text.stdout


def test_status_without_any_live_worker_prints_only_the_table(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    runledger.enqueue(autocommit_conn, "mail.send", queue="mail")

    text = _cli("status", "--dsn", dsn)
    as_json = _cli("status", "--dsn", dsn, "--json")

    assert "handles" not in text.stdout
    [entry] = json.loads(as_json.stdout)
    assert entry["unhandled_job_types"] == ["mail.send"]
