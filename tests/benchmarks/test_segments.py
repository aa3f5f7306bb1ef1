"""segments.py: a small run lays out the candidate segments, drains in every layout, and
deletes the oldest day's succeeded jobs, dropping its partitions where its dead letters'
rows can be copied out of them."""

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
    r"^\s*([\w-]+): .* rows copied: ([\d,]+), deleted: ([\d,]+) jobs, ([\d,]+) attempts, "
    r"([\d,]+) events$",
    re.M,
)
PER_DAY = 2000


def run(server: TestServer, *options: str) -> dict[str, tuple[int, ...]]:
    """A small run; per layout, the rows copied and deleted with the oldest day."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dsn", server.dsn, "--days", "3",
         "--per-day", str(PER_DAY), "--jobs", "2000", "--rounds", "1", *options],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for layout in LAYOUTS:
        assert re.search(rf"round 1 +{layout}: +[\d,]+ jobs/s", done.stdout), done.stdout
    with psycopg.connect(server.dsn) as conn:
        left = conn.execute(
            "select count(*) from pg_database where datname like 'runledger_bench_%'"
        ).fetchone()
    assert left == (0,), "a scratch database outlived the run"
    deleted = {
        m.group(1): tuple(int(g.replace(",", "")) for g in m.groups()[1:])
        for m in DELETED.finditer(done.stdout)
    }
    assert set(deleted) == set(LAYOUTS), done.stdout
    return deleted


@pytest.mark.timeout(300)
def test_dead_letters_are_copied_out_of_a_dropped_day_or_hold_it(pg_server: TestServer) -> None:
    deleted = run(pg_server, "--dead-letters", "2")
    # The oldest day's 1,960 succeeded jobs go (and any of the next day's that aged past the
    # keep meanwhile, whose rows are in the next day's segments); its 40 dead letters stay.
    for layout, (copied, jobs, attempts, events) in deleted.items():
        later = jobs - (PER_DAY - PER_DAY // 50)
        assert 0 <= later < 100, (layout, jobs)
        if layout == "events-seg":
            # the dead letters' events move to the newest segment, the rest go with the drop
            assert (copied, attempts, events) == (3 * PER_DAY // 50, jobs, 3 * later)
        else:
            # today's layout, and the time-keyed ones whose day the dead letters hold
            assert (copied, attempts, events) == (0, jobs, 3 * jobs), layout


@pytest.mark.timeout(300)
def test_without_dead_letters_every_layout_drops_the_day(pg_server: TestServer) -> None:
    deleted = run(pg_server, "--dead-letters", "0")
    for layout, (copied, jobs, attempts, events) in deleted.items():
        later = jobs - PER_DAY
        assert 0 <= later < 100, (layout, jobs)
        assert copied == 0
        if layout == "rows":
            assert (attempts, events) == (jobs, 3 * jobs)
        elif layout.startswith("events"):
            assert (attempts, events) == (jobs, 3 * later)
        else:
            assert (attempts, events) == (later, 3 * later)
