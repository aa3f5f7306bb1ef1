"""retry_workflow with a real Runtime: a run fails a step, is retried, and succeeds, reusing the
output of the step that had succeeded without running its handler again."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import psycopg
from conftest import RuntimeFactory

import runledger
from runledger import RunStatus, StepStatus


def test_a_retried_run_succeeds_and_reuses_the_output_of_the_step_that_had_succeeded(
    runtime: RuntimeFactory, autocommit_conn: psycopg.Connection[Any]
) -> None:
    calls: Counter[str] = Counter()
    lock = threading.Lock()
    broken = threading.Event()
    broken.set()
    registry = runledger.Registry()

    @registry.handler("rr.fetch")
    def fetch(ctx: runledger.JobContext, payload: Any) -> Any:
        with lock:
            calls["fetch"] += 1
        return {"rows": [1, 2, 3]}

    @registry.handler("rr.charge", max_attempts=1)
    def charge(ctx: runledger.JobContext, payload: Any) -> Any:
        with lock:
            calls["charge"] += 1
        if broken.is_set():
            raise RuntimeError("the payment service is down")
        return {"charged": sum(ctx.upstream["fetch"]["rows"])}

    @registry.handler("rr.receipt")
    def receipt(ctx: runledger.JobContext, payload: Any) -> Any:
        with lock:
            calls["receipt"] += 1
        return {"receipt": ctx.upstream["charge"]["charged"]}

    workflow = (
        runledger.WorkflowBuilder("rr.invoice")
        .step("fetch", job="rr.fetch")
        .step("charge", job="rr.charge", after="fetch")
        .step("receipt", job="rr.receipt", after="charge")
        .result_step("receipt")
        .build()
    )
    run_id = runledger.enqueue_workflow(autocommit_conn, workflow, registry)
    rt = runtime(registry)
    failed = runledger.wait_for_run(rt.store, run_id, timeout=20, poll_interval=0.1)
    assert failed.status is RunStatus.COMPLETED_WITH_ERRORS
    assert {s.step_key: s.status for s in failed.steps} == {
        "fetch": StepStatus.SUCCEEDED, "charge": StepStatus.FAILED,
        "receipt": StepStatus.CANCELLED,
    }  # fmt: skip

    broken.clear()  # the payment service is back
    with autocommit_conn.transaction():
        assert runledger.retry_workflow(autocommit_conn, run_id) == ["charge", "receipt"]
    run = runledger.wait_for_run(rt.store, run_id, timeout=20, poll_interval=0.1)

    assert run.status is RunStatus.SUCCEEDED
    assert run.result == {"receipt": 6}
    assert run.step("fetch").output == {"rows": [1, 2, 3]}
    assert calls == {"fetch": 1, "charge": 2, "receipt": 1}
    kinds = [str(e.kind) for e in runledger.list_events(autocommit_conn, run_id=run_id)]
    assert kinds.count("run.retried") == 1
    assert kinds[-1] == "run.succeeded"
