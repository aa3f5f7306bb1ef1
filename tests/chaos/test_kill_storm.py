"""A SIGKILL storm: three `runledger worker` processes, one SIGKILLed (and replaced) every
1.5 s for 10 s while jobs fall due and workflows are enqueued. No job is lost, no effect
written through ``ctx.conn`` is committed twice, nothing is left running, every workflow run
is coherent, and everything finishes within the lease plus a reaper round plus a margin."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from _chaos import storm  # on sys.path through tests/chaos/conftest.py

if TYPE_CHECKING:
    from tests.chaos.conftest import Scenario

pytestmark = pytest.mark.slow


def test_a_sigkill_storm_loses_no_job_and_commits_no_effect_twice(scenario: Scenario) -> None:
    scenario.begin(workers=3, count=3000, due_over=12)

    def kill() -> int:
        pid = scenario.workers.kill_one()
        scenario.add_workflow()
        return pid

    killed = storm(1.5, 10, kill)
    last_fault = time.monotonic()

    verdict = scenario.settle(last_fault)
    assert len(killed) >= 6
    assert verdict.jobs == 3000 + 4 * scenario.workflows
    # The storm did strike running work: some handlers ran again after a kill.
    assert verdict.extra_executions > 0
