"""prune_costs.py: a small run prunes everything it made, with the events deleted row by row
and then by segment, and reports its costs per pruned job by table and index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runledger.testing import TestServer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "prune_costs.py"


@pytest.mark.timeout(300)
def test_a_small_run_prunes_every_finished_job_and_reports_per_job(pg_server: TestServer) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dsn", pg_server.dsn, "--jobs", "3000",
         "--queued", "1000", "--batch", "1000", "--explain"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    rows, segments = out.split("=== events deleted by segments")
    assert "=== events deleted by rows" in rows
    assert "prune (4 batches of 1000): 3,000 jobs" in rows
    assert "index events_s0_job" in rows and "WAL" in rows  # segment 0: all there is
    assert "orphan sweep" in rows
    # The batches left the events; the segment holding them went whole, the queued jobs'
    # 1,000 events copied out first.
    assert (
        "prune (4 batches of 1000), then segment 0 dropped (9,000 events, 1,000 copied out)"
        in segments
    )
    assert "WAL" in segments and "orphan sweep" not in segments
    # Every finished job went with its attempt and events; the queued ones stayed.
    for layout in (rows, segments):
        assert "left: jobs, attempts, events = (1000, 0, 1000)" in layout
