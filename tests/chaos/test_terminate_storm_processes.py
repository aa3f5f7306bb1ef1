"""A terminate storm against worker processes: every backend of the database but the test's
own is ended (``pg_terminate_backend``) every 0.5 s for 5 s while three `runledger worker`
processes work. Work goes on through the storm; afterwards no job is lost, no ``ctx.conn``
effect is committed twice, nothing is left running, every workflow run is coherent, and
everything finishes within the lease plus a reaper round plus a margin of the last strike.
(``test_terminate_storm.py`` is the same storm against one in-process runtime.)"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from _chaos import TERMINATE_OTHERS, storm  # on sys.path through tests/chaos/conftest.py

if TYPE_CHECKING:
    from tests.chaos.conftest import Scenario

pytestmark = pytest.mark.slow


def test_a_terminate_storm_against_worker_processes_loses_no_job(scenario: Scenario) -> None:
    scenario.begin(workers=3, count=2000, due_over=7)
    before = scenario.succeeded()

    def strike() -> int:
        ended = int(scenario.control.scalar(TERMINATE_OTHERS))
        scenario.add_workflow()
        return ended

    ended = storm(0.5, 5, strike)
    last_fault = time.monotonic()
    during = scenario.succeeded() - before

    assert sum(ended) > len(ended), f"the storm ended too few backends: {ended}"
    assert during > 0, "no job succeeded during the storm"
    verdict = scenario.settle(last_fault)
    assert verdict.jobs == 2000 + 4 * scenario.workflows
    print(f"backends ended per strike {ended}; {during} jobs succeeded during the storm")
