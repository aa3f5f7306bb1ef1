"""`runledger worker --log-format json` as a log shipper reads it: one JSON object per line,
the job's fields as fields, from the runtime's lines and from ``ctx.logger``'s alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

import runledger

WORKER = [sys.executable, "-m", "runledger.cli", "worker"]

APP = """
import runledger

registry = runledger.Registry()


@registry.handler("logs.hello")
def hello(ctx, payload):
    ctx.logger.info("hello from the handler")
    return payload
"""


def _worker(
    dsn: str, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    environ.pop("DATABASE_URL", None)
    environ.update(env or {})
    return subprocess.Popen(
        [*WORKER, "--dsn", dsn, "--app", "logs_app:registry", "--no-listen", *args],
        cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run_one_job(dsn: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Start a worker, run one job to success, stop the worker with SIGTERM; its stderr."""
    (tmp_path / "logs_app.py").write_text(APP)
    with psycopg.connect(dsn, autocommit=True) as conn:
        job_id = runledger.enqueue(conn, "logs.hello", {"n": 1})
        worker = _worker(dsn, tmp_path, *args, env=env)
        try:
            deadline = time.monotonic() + 30
            while runledger.get_job(conn, job_id).status != "succeeded":
                assert worker.poll() is None, worker.communicate()[1]
                assert time.monotonic() < deadline, "the job did not succeed within 30 s"
                time.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    return stderr


def test_log_format_json_writes_one_parseable_object_per_line_with_the_job_fields(
    dsn: str, tmp_path: Path
) -> None:
    stderr = _run_one_job(dsn, tmp_path, "--log-format", "json")

    entries: list[dict[str, Any]] = [json.loads(line) for line in stderr.splitlines() if line]
    by_message = {e["message"]: e for e in entries}
    started = [e for e in entries if " started: " in e["message"]]
    assert len(started) == 1 and started[0]["logger"] == "runledger.runtime"
    handler_line = by_message["hello from the handler"]
    success = next(e for e in entries if "succeeded in" in e["message"])
    for entry in (handler_line, success):
        assert entry["job_type"] == "logs.hello"
        assert entry["queue"] == "default"
        assert entry["attempt"] == 1
        assert len(entry["job_id"]) == 36
        assert "run_id" not in entry and "step_key" not in entry
    assert handler_line["level"] == "INFO" and success["logger"] == "runledger.jobs"
    assert any(" stopped: " in e["message"] for e in entries)


def test_runledger_log_format_from_the_environment_is_used_and_a_bad_one_refused(
    dsn: str, tmp_path: Path
) -> None:
    stderr = _run_one_job(dsn, tmp_path, env={"RUNLEDGER_LOG_FORMAT": "json"})
    assert all(json.loads(line) for line in stderr.splitlines() if line)

    bad = subprocess.run(
        [*WORKER, "--dsn", dsn, "--app", "logs_app:registry"],
        cwd=tmp_path, env={**os.environ, "RUNLEDGER_LOG_FORMAT": "xml"}, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "RUNLEDGER_LOG_FORMAT" in bad.stderr and "text or json" in bad.stderr
