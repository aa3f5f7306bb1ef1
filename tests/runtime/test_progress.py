"""``ctx.progress(...)``: kept in memory, written by the heartbeat with its lease renewal while
the handler runs (many reports, few writes), and written at the attempt's end so the last one
stays; ``get_job`` returns it."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest

import runledger
from runledger.errors import InvalidProgress
from runledger.postgres import attempts
from runledger.runtime import heartbeat
from tests.runtime.conftest import RuntimeFactory, WaitForJob, WaitUntil

REPORTS = 1000


def _progress(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> Any:
    return runledger.get_job(conn, job_id).progress


def test_the_heartbeat_writes_the_latest_progress_while_the_handler_runs_coalescing_reports(
    observer: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[str] = []

    def counting_renew(
        conn: Any, leases: Any, *, lease_seconds: float, progress: Mapping[uuid.UUID, str]
    ) -> set[uuid.UUID]:
        writes.extend(progress.values())
        return attempts.renew_leases(conn, leases, lease_seconds=lease_seconds, progress=progress)

    monkeypatch.setattr(heartbeat, "renew_leases", counting_renew)
    registry = runledger.Registry()
    first_shown, many_reported, release = threading.Event(), threading.Event(), threading.Event()

    @registry.handler("import.pages")
    def pages(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.progress(0.4, note="page 4 of 10")
        first_shown.wait(10)
        for n in range(REPORTS):
            ctx.progress({"rows": n})
        many_reported.set()
        release.wait(10)
        ctx.progress(1, note="done")
        return "imported"

    # Renewals every 0.2 s: the handler waits without any write of its own.
    runtime(registry, lease_seconds=0.6)
    job_id = runledger.enqueue(observer, "import.pages")

    wait_until(lambda: _progress(observer, job_id) is not None, what="the first progress")
    job = runledger.get_job(observer, job_id)
    assert job.status is runledger.JobStatus.RUNNING
    assert job.progress["fraction"] == 0.4
    assert job.progress["note"] == "page 4 of 10"
    assert job.progress["attempt"] == 1
    assert "at" in job.progress

    writes.clear()
    first_shown.set()
    assert many_reported.wait(10)
    wait_until(
        lambda: (_progress(observer, job_id) or {}).get("value") == {"rows": REPORTS - 1},
        what="the last of the many reports",
    )
    assert runledger.get_job(observer, job_id).status is runledger.JobStatus.RUNNING
    # A thousand reports, a handful of renewals: each renewal wrote the latest at most once.
    assert 1 <= len(writes) <= 10, len(writes)
    assert len(writes) == len(set(writes))

    release.set()
    job = wait_for_job(job_id, "succeeded")
    assert job.progress["fraction"] == 1.0 and job.progress["note"] == "done"


def test_the_last_report_is_written_with_the_outcome_without_waiting_for_a_heartbeat(
    autocommit_conn: psycopg.Connection[Any],
    observer: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()
    release = threading.Event()
    refused: list[str] = []

    @registry.handler("report.plain", max_attempts=2, retry=runledger.RetryPolicy(base=0))
    def plain(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.progress({"step": "last", "attempt": ctx.attempt})
        if ctx.attempt == 1:
            raise RuntimeError("kept on failure too")
        return "ok"

    @registry.handler("report.conn")
    def in_conn(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.conn.execute("select 1")
        ctx.progress(0.99, note="written with the success in ctx.conn")
        return "ok"

    @registry.handler("report.beat")
    def beat(ctx: runledger.JobContext, payload: Any) -> Any:
        for bad in (2, -1, {"when": object()}):
            try:
                ctx.progress(bad)
            except InvalidProgress as err:
                refused.append(err.field)
        ctx.progress(0.5, note="sent by ctx.heartbeat()")
        assert ctx.heartbeat()
        release.wait(10)
        return "ok"

    # A 60 s lease: no renewal comes within the test after the first beat.
    runtime(registry, lease_seconds=60)
    plain_id = runledger.enqueue(autocommit_conn, "report.plain")
    conn_id = runledger.enqueue(autocommit_conn, "report.conn")
    beat_id = runledger.enqueue(autocommit_conn, "report.beat")

    assert wait_for_job(plain_id, "succeeded").progress["value"] == {"step": "last", "attempt": 2}
    failed = runledger.list_attempts(observer, plain_id)[0]
    assert failed.outcome is runledger.AttemptOutcome.FAILED
    assert wait_for_job(conn_id, "succeeded").progress["fraction"] == 0.99
    wait_until(lambda: _progress(observer, beat_id) is not None, what="ctx.heartbeat's write")
    assert runledger.get_job(observer, beat_id).progress["note"] == "sent by ctx.heartbeat()"
    assert refused == ["fraction", "fraction", "value"]
    release.set()
    wait_for_job(beat_id, "succeeded")
