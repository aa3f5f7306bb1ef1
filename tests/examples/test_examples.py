"""The examples run as a user runs them, against a fresh database of the test's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_invoice_example_runs_the_workflow_to_completion(dsn: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": dsn}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "invoice.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "same run True, runs (1,)" in out
    assert "notify    external  waiting" in out
    assert "run succeeded; result {'charged': 4200}" in out
    assert "charges rows: 1" in out
