"""A server restart: three `runledger worker` processes on a PostgreSQL of the test's own,
which the test restarts twice (``pg_ctl restart -m fast``) while jobs fall due. The workers
reconnect by themselves; no job is lost, no ``ctx.conn`` effect is committed twice, nothing is
left running, every workflow run is coherent, and everything finishes within the lease plus
a reaper round plus a margin of the last restart. The server is stopped in teardown."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from _chaos import OwnServer

    from tests.chaos.conftest import Scenario

pytestmark = pytest.mark.slow


def test_a_server_restart_loses_no_job_and_commits_no_effect_twice(
    own_server: OwnServer, own_scenario: Scenario
) -> None:
    scenario = own_scenario
    scenario.begin(workers=3, count=2000, due_over=8)
    started = scenario.control.scalar("select pg_postmaster_start_time()")

    downtimes = []
    for _ in range(2):
        target = scenario.succeeded() + 500
        scenario.wait_for(
            lambda target=target: scenario.succeeded() >= target,
            timeout=30,
            what=f"{target} jobs to succeed",
        )
        downtimes.append(own_server.restart())
        scenario.add_workflow()
    last_fault = time.monotonic()

    assert scenario.control.scalar("select pg_postmaster_start_time()") > started
    verdict = scenario.settle(last_fault)
    assert verdict.jobs == 2000 + 4 * scenario.workflows
    print(f"downtimes {downtimes}")
