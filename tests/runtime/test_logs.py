"""The worker's log at the default level tells each job's story: a start line, one line per
outcome (WARNING for a retry, ERROR with the traceback for a dead letter, INFO with the
duration for a success), a warning for handlers on queues nobody here consumes, a stop line."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import psycopg
import pytest

import runledger
from runledger.runtime.logs import JsonFormatter, safe_conninfo
from tests.runtime.conftest import RuntimeFactory, WaitForJob, WaitUntil

FAST = runledger.RetryPolicy(base=0.0, jitter=0.0)


def _records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


def test_a_job_dead_lettered_after_two_attempts_logs_a_warning_then_an_error_with_traceback(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registry = runledger.Registry()

    @registry.handler("logs.boom", max_attempts=2, retry=FAST)
    def boom(ctx: runledger.JobContext, payload: Any) -> None:
        raise ValueError("the mail server said no")

    job_id = runledger.enqueue(autocommit_conn, "logs.boom")
    runtime(registry)
    wait_for_job(job_id, "failed")
    wait_until(lambda: len(_records(caplog, "runledger.jobs")) >= 2, what="two outcome lines")

    lines = [r for r in _records(caplog, "runledger.jobs") if r.levelno >= logging.WARNING]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.ERROR]
    warning, error = (r.getMessage() for r in lines)
    assert f"logs.boom[{job_id}] failed (attempt 1/2), will retry at" in warning
    assert warning.endswith("ValueError: the mail server said no")
    assert "\n" not in warning
    assert f"logs.boom[{job_id}] failed (attempt 2/2), dead-lettered" in error
    assert "Traceback (most recent call last)" in error
    assert 'raise ValueError("the mail server said no")' in error
    assert lines[1].job_id == str(job_id)  # type: ignore[attr-defined]
    assert lines[1].queue == "default"  # type: ignore[attr-defined]
    assert lines[1].attempt == 2  # type: ignore[attr-defined]


def test_a_success_logs_an_info_line_with_its_duration(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registry = runledger.Registry()

    @registry.handler("logs.ok")
    def ok(ctx: runledger.JobContext, payload: Any) -> int:
        return 1

    job_id = runledger.enqueue(autocommit_conn, "logs.ok")
    runtime(registry)
    wait_for_job(job_id, "succeeded")

    # The outcome is logged after its commit, which the poll may see first.
    wait_until(lambda: _records(caplog, "runledger.jobs"), what="the success line")
    lines = _records(caplog, "runledger.jobs")
    assert [r.levelno for r in lines] == [logging.INFO]
    assert re.fullmatch(rf"logs\.ok\[{job_id}\] succeeded in \d+\.\d{{3}}s", lines[0].getMessage())


def test_the_start_line_names_queues_and_handlers_and_warns_of_unconsumed_queues(
    runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    registry = runledger.Registry()

    @registry.handler("logs.report")
    def report(ctx: runledger.JobContext, payload: Any) -> None:
        pass

    @registry.handler("email.send", queue="mail")
    def send(ctx: runledger.JobContext, payload: Any) -> None:
        pass

    rt = runtime(registry, queues=["default"], concurrency=3, prefetch=1)
    started = [
        r.getMessage()
        for r in _records(caplog, "runledger.runtime")
        if "started:" in r.getMessage()
    ]
    assert len(started) == 1
    line = started[0]
    assert f"runledger {runledger.__version__} worker {rt.worker_id} started" in line
    assert "queues default; handlers default: logs.report;" in line
    assert "concurrency 3, prefetch 1, polling" in line
    assert "password" not in line
    warnings = [
        r.getMessage()
        for r in _records(caplog, "runledger.runtime")
        if r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "handler email.send defaults to queue 'mail'" in warnings[0]
    assert "--queues mail" in warnings[0]

    rt.stop()
    stopped = [
        r.getMessage()
        for r in _records(caplog, "runledger.runtime")
        if "stopped:" in r.getMessage()
    ]
    assert stopped == [
        f"worker {rt.worker_id} stopped: drained 0 running handlers, released 0 prefetched "
        "jobs, abandoned 0 still running (leases expired, to be retried)"
    ]


def test_the_database_is_logged_without_its_password() -> None:
    shown = safe_conninfo("postgresql://app:s3cret@db.example:5433/jobs")

    assert "s3cret" not in shown
    assert "host=db.example" in shown
    assert "dbname=jobs" in shown


def test_the_json_formatter_writes_the_job_fields_present() -> None:
    record = logging.LogRecord(
        "runledger.jobs", logging.INFO, __file__, 1, "hello %s", ("x",), None
    )
    record.job_id = "abc"
    record.attempt = 2
    record.step_key = None

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "hello x"
    assert entry["level"] == "INFO"
    assert entry["job_id"] == "abc"
    assert entry["attempt"] == 2
    assert "step_key" not in entry
