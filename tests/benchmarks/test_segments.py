"""segments.py: a small run lays out the candidate segments, drains in every layout, and
deletes the oldest day by dropping its partitions where it has them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from runledger.testing import TestServer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "segments.py"
LAYOUTS = ("rows", "events-seg", "events-time", "both-time")
DELETED = re.compile(
    r"^\s*([\w-]+): .* rows deleted: ([\d,]+) jobs, ([\d,]+) attempts, ([\d,]+) events$", re.M
)


@pytest.mark.timeout(300)
def test_a_small_run_drains_every_layout_and_drops_the_oldest_day(pg_server: TestServer) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dsn", pg_server.dsn, "--days", "3",
         "--per-day", "2000", "--jobs", "2000", "--rounds", "1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for layout in LAYOUTS:
        assert re.search(rf"round 1 +{layout}: +[\d,]+ jobs/s", out), out
    deleted = {
        m.group(1): tuple(int(g.replace(",", "")) for g in m.groups()[1:])
        for m in DELETED.finditer(out)
    }
    assert set(deleted) == set(LAYOUTS), out
    # The oldest day is 2,000 jobs; jobs of the next day may have aged past the keep
    # meanwhile, and their rows are in the next day's segments.
    for layout, (jobs, attempts, events) in deleted.items():
        later = jobs - 2000
        assert 0 <= later < 100, (layout, jobs)
        if layout == "rows":
            assert (attempts, events) == (jobs, 3 * jobs)
        elif layout.startswith("events"):
            assert (attempts, events) == (jobs, 3 * later)
        else:
            assert (attempts, events) == (later, 3 * later)
    # No scratch database outlives the run.
    with psycopg.connect(pg_server.dsn) as conn:
        left = conn.execute(
            "select count(*) from pg_database where datname like 'runledger_bench_%'"
        ).fetchone()
    assert left == (0,)
