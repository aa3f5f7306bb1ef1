"""The fault scenarios' machinery: several ``runledger worker`` processes on one database, a
backlog due at a steady rate while the faults strike, and the invariants checked afterwards.

The worker app, the process launcher, the restartable server and the checks live in
``benchmarks/_chaos.py``, which ``benchmarks/chaos.py`` runs at scale; they are imported from
there (as ``tests/benchmarks`` imports the benchmarks) so both check the same things.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runledger

# Appended, not prepended: the benchmarks' modules shadow nothing that is found elsewhere.
sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _chaos import (
    EFFECTS_TABLE,
    Control,
    OwnServer,
    Verdict,
    Workers,
    check,
    create_database,
    enqueue_workflow,
    jobs,
    wait_until_finished,
)

#: The workers' lease; the reaper of each worker runs every 5 s (the Runtime's default: the
#: CLI has no setting for it). Recovery after the last fault must fit in both plus a margin.
LEASE_SECONDS = 2.0
REAP_INTERVAL = 5.0
MARGIN = 10.0
RECOVERY_BOUND = LEASE_SECONDS + REAP_INTERVAL + MARGIN
#: Each handler waits this long: with 3 workers of concurrency 4 at most 600 jobs/s run,
#: well above the rate the backlog falls due at, so what is left at the last fault is small.
HANDLER_SECONDS = 0.02
WORKFLOW_STEP_SECONDS = 0.2


class Scenario:
    """Worker processes on database ``dsn`` and a backlog of jobs due at a steady rate.

    ``begin()`` starts the workers, enqueues the backlog and waits for the first jobs to
    succeed; the test then strikes its faults (adding a workflow at each with
    ``add_workflow()``) and calls ``settle(last_fault)``, which waits for every job to finish,
    asserts the recovery bound, stops the workers and asserts every invariant.
    """

    def __init__(self, dsn: str, directory: Path) -> None:
        self.dsn = dsn
        self.control = Control(dsn)
        self.control.run(lambda conn: conn.execute(EFFECTS_TABLE))
        self.workers = Workers(dsn, directory, concurrency=4, lease_seconds=LEASE_SECONDS)
        self.workflows = 0
        self.verdict: Verdict | None = None
        self.recovery: float | None = None

    def begin(self, *, workers: int, count: int, due_over: float) -> None:
        """Start ``workers`` processes, enqueue ``count`` jobs due evenly over the next
        ``due_over`` seconds and three workflows, and wait for a first 50 jobs to succeed."""
        self.workers.start(workers)
        backlog = jobs(count, seconds_each=HANDLER_SECONDS, spread_over=due_over)
        self.control.run(lambda conn: runledger.enqueue_many(conn, backlog))
        for _ in range(3):
            self.add_workflow()
        self.wait_for(lambda: self.succeeded() >= 50, timeout=30, what="a first 50 jobs to succeed")

    def add_workflow(self) -> None:
        """Enqueue one more diamond workflow (repeatable through a fault: it has a key)."""
        self.workflows += 1
        enqueue_workflow(self.control, f"wf-{self.workflows}", seconds_each=WORKFLOW_STEP_SECONDS)

    def succeeded(self) -> int:
        return int(
            self.control.scalar("select count(*) from runledger.jobs where status = 'succeeded'")
        )

    def wait_for(self, predicate: object, *, timeout: float, what: str) -> None:
        """Poll ``predicate`` every 50 ms; fail (with the workers' state) after ``timeout``."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            self.workers.check()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def settle(self, last_fault: float) -> Verdict:
        """Wait for every job to finish (at most ``RECOVERY_BOUND`` after ``last_fault``, a
        monotonic time), stop the workers gracefully and assert every invariant."""
        self.workers.check()
        finished = wait_until_finished(
            self.control, timeout=max(0.0, last_fault + RECOVERY_BOUND - time.monotonic())
        )
        self.recovery = None if finished is None else finished - last_fault
        codes = self.workers.stop()
        self.verdict = self.control.run(lambda conn: check(conn, self.workers.runs))
        # Shown with -s or on failure: what the faults did.
        print(f"recovery {self.recovery} s; {self.verdict}")
        problems = self.verdict.problems()
        assert not problems, "\n".join(problems) + f"\n{self.verdict}"
        assert self.recovery is not None, (
            f"jobs still unfinished {RECOVERY_BOUND} s after the last fault: {self.verdict}"
        )
        assert self.recovery <= RECOVERY_BOUND
        assert self.verdict.runs == self.workflows
        assert codes == [0] * len(codes), [self.workers.output(p) for p in self.workers.logs]
        return self.verdict

    def close(self) -> None:
        self.workers.stop(timeout=10)
        self.control.close()


@pytest.fixture
def scenario(dsn: str, tmp_path: Path) -> Iterator[Scenario]:
    """A scenario on this test's database of the session's server."""
    chaos = Scenario(dsn, tmp_path)
    try:
        yield chaos
    finally:
        chaos.close()


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    """A PostgreSQL server of this test's own (embedded), which it may restart; stopped in
    teardown whatever happens."""
    server = OwnServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_scenario(own_server: OwnServer, tmp_path: Path) -> Iterator[Scenario]:
    """A scenario on a database of ``own_server``."""
    chaos = Scenario(create_database(own_server.dsn, "chaos"), tmp_path)
    try:
        yield chaos
    finally:
        chaos.close()
