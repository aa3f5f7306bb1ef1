"""A handler's ``ctx.conn`` dies (its backend is terminated while idle in transaction) before
the runtime finishes the attempt: whatever the handler did (returned, raised, ran past its
timeout), the attempt is resolved, the lease is no longer renewed by this process, and the job
runs again and succeeds once, with only the second attempt's write committed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import runledger
from runledger import RetryPolicy
from tests.runtime.conftest import RuntimeFactory, WaitForJob, wait_until

TERMINATE = "select pg_terminate_backend(%s)"
GONE = "select not exists (select from pg_stat_activity where pid = %s)"


def kill_backend(conn: psycopg.Connection[Any], pid: int) -> None:
    """Terminate backend ``pid`` and wait until the server no longer lists it."""
    with psycopg.connect(conn.info.dsn, autocommit=True) as killer:
        killer.execute(TERMINATE, (pid,))
        deadline = time.monotonic() + 10
        while not killer.execute(GONE, (pid,)).fetchone()[0]:  # type: ignore[index]
            if time.monotonic() > deadline:
                pytest.fail(f"backend {pid} still listed 10 s after pg_terminate_backend")
            time.sleep(0.01)


@pytest.fixture
def effects(autocommit_conn: psycopg.Connection[Any]) -> Callable[[], list[int]]:
    """A table handlers write to through ``ctx.conn``; returns the attempts that committed."""
    autocommit_conn.execute("create table public.effects (attempt int not null)")

    def committed() -> list[int]:
        rows = autocommit_conn.execute("select attempt from public.effects order by attempt")
        return [row[0] for row in rows.fetchall()]

    return committed


@pytest.mark.parametrize("ending", ["returns", "raises", "times_out"])
def test_an_attempt_whose_ctx_conn_died_is_resolved_and_the_job_runs_again(
    autocommit_conn: psycopg.Connection[Any],
    runtime: RuntimeFactory,
    wait_for_job: WaitForJob,
    effects: Callable[[], list[int]],
    ending: str,
) -> None:
    registry = runledger.Registry()

    @registry.handler(
        "killed", max_attempts=3, timeout_seconds=1, retry=RetryPolicy(base=0.05, jitter=0)
    )
    def killed(ctx: runledger.JobContext, payload: Any) -> Any:
        ctx.conn.execute("insert into public.effects (attempt) values (%s)", (ctx.attempt,))
        if ctx.attempt == 1:
            kill_backend(ctx.conn, ctx.conn.info.backend_pid)
            if ending == "raises":
                raise RuntimeError("the handler failed after its connection died")
            if ending == "times_out":
                ctx.cancelled.wait(5)  # set at the 1 s timeout
        return ctx.attempt

    # A long lease: the job must come back through the attempt's own outcome, not the reaper.
    rt = runtime(registry, lease_seconds=30, concurrency=1, prefetch=0)
    job_id = runledger.enqueue(autocommit_conn, "killed", {})

    job = wait_for_job(job_id, "succeeded", timeout=15)
    assert job.attempt == 2
    assert job.output == 2
    assert effects() == [2]
    # Nothing of the dead attempt is left for the heartbeat to renew.
    wait_until(lambda: not rt.pool.flights(), timeout=5, what="no attempt left in flight")
