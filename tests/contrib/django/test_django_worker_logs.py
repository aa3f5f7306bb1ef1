"""``manage.py runledger_worker --log-format json``: runledger's lines as JSON objects."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable

import psycopg
import pytest

import runledger


def test_the_worker_command_with_log_format_json_writes_json_lines_with_the_job_fields(
    dsn: str,
    spawn: Callable[..., subprocess.Popen[str]],
    wait_until: Callable[..., None],
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        echo = runledger.enqueue(conn, "rltest.echo", {"hello": "json"})
        process = spawn(dsn, ["runledger_worker", "--log-format", "json"])

        def succeeded() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the worker exited early: {process.communicate()}")
            return runledger.get_job(conn, echo).status == runledger.JobStatus.SUCCEEDED

        wait_until(succeeded, timeout=30, what="the worker to run the job")

    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)

    assert process.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    success = [e for e in entries if e.get("job_id") == str(echo) and "succeeded" in e["message"]]
    assert len(success) == 1, err
    assert success[0]["job_type"] == "rltest.echo"
    assert success[0]["queue"] == "default"
    assert any(" started: " in e["message"] for e in entries)
