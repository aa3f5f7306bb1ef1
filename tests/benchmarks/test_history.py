"""history.py: ``--help`` documents ``--quick``, and a ``--quick`` run (made smaller still)
measures every figure against the test server, from two checkouts (this one twice)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runledger.testing import TestServer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "history.py"


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_documents_quick() -> None:
    done = run("--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout
    assert "200,000 kept" in done.stdout


@pytest.mark.timeout(300)
def test_a_quick_run_measures_every_figure(pg_server: TestServer) -> None:
    done = run(
        "--quick", "--dsn", pg_server.dsn, "--history", "20000", "--jobs", "2000",
        "--retention-jobs", "150000", "--before", str(ROOT),
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0] + " " + line.split()[1] for line in done.stdout.splitlines() if line}
    for figure in ("empty", "kept", "retention-on", "retention-off", "retention-unpaced"):
        assert f"after {figure}" in rows
    assert {"before empty", "before kept"} <= rows
    assert "20,000 of 20,000 kept jobs in runledger.job_history" in done.stdout
    ratios = ("kept / empty jobs/s (after)", "kept: after / before", "retention on / off",
              "unpaced on / off")  # fmt: skip
    for ratio in ratios:
        assert ratio in done.stdout
