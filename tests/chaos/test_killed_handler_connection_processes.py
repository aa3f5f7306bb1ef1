"""Killed handler connections: while three `runledger worker` processes work, the backend of
every handler's ``ctx.conn`` found idle in transaction (after writing its effect, before the
runtime commits it with the outcome) is ended every 0.3 s for 4 s. Each such attempt is
resolved (its effect rolled back, the job run again); no job is lost, no effect is committed
twice, nothing is left running (a lease renewed for a dead attempt would show here), every
workflow run is coherent, and everything finishes within the lease plus a reaper round plus a
margin of the last strike."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from _chaos import TERMINATE_HANDLER_CONNECTIONS, storm  # on sys.path through conftest.py

if TYPE_CHECKING:
    from tests.chaos.conftest import Scenario

pytestmark = pytest.mark.slow


def test_killed_handler_connections_lose_no_job_and_commit_no_effect_twice(
    scenario: Scenario,
) -> None:
    scenario.begin(workers=3, count=2000, due_over=6)

    def strike() -> int:
        ended = int(scenario.control.scalar(TERMINATE_HANDLER_CONNECTIONS))
        scenario.add_workflow()
        return ended

    ended = storm(0.3, 4, strike)
    last_fault = time.monotonic()

    assert sum(ended) >= 5, f"too few handler connections were caught idle: {ended}"
    verdict = scenario.settle(last_fault)
    assert verdict.jobs == 2000 + 4 * scenario.workflows
    # The killed attempts ran their handlers again (not necessarily each one: a handler can
    # commit between the storm's look at pg_stat_activity and its pg_terminate_backend).
    assert verdict.extra_executions > 0
    print(f"handler connections ended per strike {ended}")
