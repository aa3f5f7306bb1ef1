"""The workflow engine at the SQL layer: release, cascade, run status, counters, events, fan-in.

Jobs are claimed and finished with ``runledger.postgres.attempts`` directly, one committed
transaction each, the way the runtime does it. Every job step's job type is its step key, so
``claim_step(conn, run_id, "b")`` claims exactly the job of step ``b``.

This module also holds the helpers the other workflow tests import (``claim_step``,
``finish_job``, ``run_step``, ``check_run``, ``check_events``): tests/integration has no shared
helper module of its own, and these belong with the engine's tests.
"""

from __future__ import annotations

import itertools
import queue
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

import runledger
from runledger import (
    AttemptOutcome,
    JobStatus,
    ReleaseMode,
    RunStatus,
    StepKind,
    StepStatus,
    WorkflowBuilder,
)
from runledger.postgres.attempts import AttemptResult, ClaimedJob, FinishReport, claim, finish

Conn = psycopg.Connection[Any]

QUEUE = "default"
WORKER = "test-worker"

# --- helpers shared with test_external_steps, test_cancel and test_lock_order -----------------


def enqueue(conn: Conn, builder: WorkflowBuilder) -> uuid.UUID:
    """Build and enqueue a workflow on ``conn`` and commit."""
    run_id = runledger.enqueue_workflow(conn, builder.build())
    conn.commit()
    return run_id


def claim_jobs(
    conn: Conn, job_types: Iterable[str], *, limit: int = 1000, lease_seconds: float = 30
) -> list[ClaimedJob]:
    """Claim up to ``limit`` queued jobs of these types and commit."""
    jobs = claim(
        conn,
        worker=WORKER,
        queues=[QUEUE],
        job_types=list(job_types),
        limit=limit,
        lease_seconds=lease_seconds,
    )
    conn.commit()
    return jobs


def claim_step(conn: Conn, run_id: uuid.UUID, key: str) -> ClaimedJob:
    """Claim the queued job of step ``key`` of the run (its job type is ``key``) and commit."""
    jobs = claim_jobs(conn, [key], limit=1)
    assert len(jobs) == 1, f"step {key!r} has no claimable job"
    job = jobs[0]
    assert (job.workflow_run_id, job.step_key) == (run_id, key)
    return job


def result(
    job: ClaimedJob,
    status: JobStatus = JobStatus.SUCCEEDED,
    output: Any = None,
    *,
    outcome: AttemptOutcome | None = None,
) -> AttemptResult:
    """The attempt result a handler of ``job`` would produce: success, retry or failure."""
    if status is JobStatus.SUCCEEDED:
        return AttemptResult(
            job_id=job.id,
            lease_token=job.lease_token,
            status=status,
            outcome=AttemptOutcome.SUCCEEDED,
            output=output,
        )
    return AttemptResult(
        job_id=job.id,
        lease_token=job.lease_token,
        status=status,
        outcome=outcome or AttemptOutcome.FAILED,
        error_type="StepError",
        error_message=f"{job.step_key or job.job_type} broke",
    )


def finish_job(
    conn: Conn, job: ClaimedJob, status: JobStatus = JobStatus.SUCCEEDED, output: Any = None
) -> FinishReport:
    """Finish one claimed job (success, retry with ``QUEUED`` or failure) and commit."""
    report = finish(conn, [result(job, status, output)])
    conn.commit()
    return report


def run_step(
    conn: Conn,
    run_id: uuid.UUID,
    key: str,
    status: JobStatus = JobStatus.SUCCEEDED,
    output: Any = None,
) -> ClaimedJob:
    """Claim and finish the job of step ``key``, two committed transactions; return the claim."""
    job = claim_step(conn, run_id, key)
    report = finish_job(conn, job, status, output)
    assert report.lost == ()
    return job


def steps_of(conn: Conn, run_id: uuid.UUID) -> dict[str, StepStatus]:
    """Step key -> status."""
    return {s.step_key: s.status for s in runledger.get_workflow_run(conn, run_id).steps}


def job_rows(conn: Conn, run_id: uuid.UUID, step_key: str) -> int:
    """How many job rows the step has (never more than one: retries reuse the row)."""
    row = conn.execute(
        "select count(*) from runledger.jobs where workflow_run_id = %s and step_key = %s",
        (run_id, step_key),
    ).fetchone()
    assert row is not None
    return int(row[0])


_ACTIVE = (StepStatus.QUEUED, StepStatus.RUNNING)


def expected_run_status(open_: int, active: int, unsuccessful: int) -> RunStatus:
    """The status docs/architecture.md §3 derives from the counters of an uncancelled run."""
    if open_ == 0:
        return RunStatus.SUCCEEDED if unsuccessful == 0 else RunStatus.COMPLETED_WITH_ERRORS
    return RunStatus.RUNNING if active else RunStatus.WAITING


def check_run(conn: Conn, run_id: uuid.UUID) -> runledger.WorkflowRunRecord:
    """Assert that a run's counters, status, steps, edges and jobs agree; return the run.

    - steps_open = steps not succeeded/failed/cancelled; steps_active = job steps queued or
      running; steps_unsuccessful = steps failed or cancelled; the status follows from them
      (or is ``cancelled``, with every step settled);
    - a step has at most one job row, ``step.job_id`` points at it, and the job's status
      matches the step's; blocked steps and external steps have none;
    - a blocked step waits for exactly ``deps_pending`` unfinished prerequisites and none of
      its success-prerequisites failed; a released step has all prerequisites finished and
      every success-prerequisite succeeded;
    - a finished run has no queued or running job; a succeeded run's result is the output
      of its result step.

    Reads only; pass a connection that sees committed rows (autocommit).
    """
    run = runledger.get_workflow_run(conn, run_id)
    jobs: dict[str, list[runledger.JobRecord]] = defaultdict(list)
    for job in runledger.list_jobs(conn, workflow_run_id=run_id, limit=1_000_000):
        assert job.step_key is not None
        jobs[job.step_key].append(job)
    problems = _run_problems(run)
    retried = any(e.kind == "run.retried" for e in runledger.list_events(conn, run_id=run_id))
    for step in run.steps:
        own = jobs.get(step.step_key, [])
        if retried:
            # A step reset by retry_workflow keeps its earlier, finished job in the ledger and
            # may get a new one; only the job the step points at is its own.
            problems.extend(
                f"step {step.step_key!r} has an earlier job {j.id} that is {j.status}"
                for j in own
                if j.id != step.job_id and not j.status.is_terminal
            )
            own = [j for j in own if j.id == step.job_id]
        problems.extend(_step_problems(run, step, own))
    if run.status.is_terminal:
        live = [j.step_key for js in jobs.values() for j in js if not j.status.is_terminal]
        if live:
            problems.append(f"{run.status} run still has live jobs for {live}")
    assert not problems, f"run {run_id}:\n  " + "\n  ".join(problems)
    return run


def _run_problems(run: runledger.WorkflowRunRecord) -> list[str]:
    problems: list[str] = []
    open_ = sum(1 for s in run.steps if not s.status.is_terminal)
    active = sum(1 for s in run.steps if s.kind is StepKind.JOB and s.status in _ACTIVE)
    unsuccessful = sum(
        1 for s in run.steps if s.status in (StepStatus.FAILED, StepStatus.CANCELLED)
    )
    counted = (run.steps_open, run.steps_active, run.steps_unsuccessful)
    if counted != (open_, active, unsuccessful):
        problems.append(
            f"counters (open, active, unsuccessful) = {counted}, steps say "
            f"{(open_, active, unsuccessful)}"
        )
    expected = expected_run_status(open_, active, unsuccessful)
    if run.status is RunStatus.CANCELLED:
        if open_:
            problems.append(f"cancelled run has {open_} open steps")
    elif run.status is not expected:
        problems.append(f"run is {run.status}, its steps say {expected}")
    if (run.finished_at is not None) != run.status.is_terminal:
        problems.append(f"run is {run.status} with finished_at {run.finished_at}")
    if run.steps_total != len(run.steps):
        problems.append(f"steps_total {run.steps_total} for {len(run.steps)} steps")
    if (
        run.status is RunStatus.SUCCEEDED
        and run.result_step is not None
        and run.result != run.step(run.result_step).output
    ):
        problems.append(f"result {run.result!r} is not the output of {run.result_step}")
    return problems


def _step_problems(
    run: runledger.WorkflowRunRecord, step: runledger.StepRecord, own: list[runledger.JobRecord]
) -> list[str]:
    problems: list[str] = []
    where = f"step {step.step_key!r} ({step.kind}, {step.status})"
    if len(own) > 1:
        problems.append(f"{where} has {len(own)} job rows")
    job = own[0] if own else None
    if step.job_id != (job.id if job else None):
        problems.append(f"{where} points at job {step.job_id}, its job row is {job}")
    if step.kind is StepKind.EXTERNAL or step.status is StepStatus.BLOCKED:
        if job is not None:
            problems.append(f"{where} has a job")
    elif step.status is StepStatus.CANCELLED:
        if job is not None and job.status is not JobStatus.CANCELLED:
            problems.append(f"{where} has a {job.status} job")
    elif job is None or str(job.status) != str(step.status):
        problems.append(f"{where} has job {job and job.status}")

    prerequisites = [
        (run.step(e.prerequisite_key), e.release_mode)
        for e in run.edges
        if e.step_key == step.step_key
    ]
    unfinished = [p.step_key for p, _ in prerequisites if not p.status.is_terminal]
    doomed = [
        p.step_key
        for p, mode in prerequisites
        if mode is ReleaseMode.ON_SUCCESS and p.status in (StepStatus.FAILED, StepStatus.CANCELLED)
    ]
    if step.status is StepStatus.BLOCKED:
        if not unfinished or step.deps_pending != len(unfinished):
            problems.append(
                f"{where} has deps_pending {step.deps_pending}, unfinished prerequisites "
                f"{unfinished}"
            )
        if doomed:
            problems.append(f"{where} should have been cancelled: {doomed} did not succeed")
    elif step.status is not StepStatus.CANCELLED and (unfinished or doomed or step.deps_pending):
        problems.append(
            f"{where} released with unfinished {unfinished}, doomed {doomed}, "
            f"deps_pending {step.deps_pending}"
        )
    return problems


_RUN_EVENT_STATUS = {
    "run.waiting": RunStatus.WAITING,
    "run.resumed": RunStatus.RUNNING,
    "run.succeeded": RunStatus.SUCCEEDED,
    "run.completed_with_errors": RunStatus.COMPLETED_WITH_ERRORS,
    "run.cancelled": RunStatus.CANCELLED,
}


def check_events(conn: Conn, run_id: uuid.UUID) -> list[tuple[str, str | None]]:
    """Assert that the ledger records every step and run transition of the run, once.

    Every settled step has exactly one ``step.<status>`` event of its final status and no
    other final one. Every job step that got a job has one ``step.queued`` event before its
    job started (``job.enqueued`` may come on either side: enqueue writes it after
    ``step.queued``, a release before). Every external step that was waiting has one
    ``step.waiting``. Run events start with ``run.enqueued``, never repeat a status and end
    on the run's status. Returns the (kind, step_key) list in ledger order.
    """
    run = runledger.get_workflow_run(conn, run_id)
    events = runledger.list_events(conn, run_id=run_id)
    kinds = [(str(e.kind), e.step_key) for e in events]
    # A run.retried event starts the history of the steps it reset over again.
    reset_at: dict[str, int] = {}
    for index, e in enumerate(events):
        if e.kind == "run.retried":
            assert isinstance(e.data, dict)
            reset_at.update(dict.fromkeys(e.data["steps"], index))
    per_step: dict[str | None, list[str]] = defaultdict(list)
    for index, (kind, key) in enumerate(kinds):
        if key is None or index > reset_at.get(key, -1):
            per_step[key].append(kind)
    problems: list[str] = []
    for step in run.steps:
        seen = Counter(per_step.get(step.step_key, []))
        finals = {
            k: n
            for k, n in seen.items()
            if k in ("step.succeeded", "step.failed", "step.cancelled")
        }
        if step.status.is_terminal:
            if finals != {f"step.{step.status}": 1}:
                problems.append(f"{step.step_key} is {step.status}; final events {finals}")
        elif finals:
            problems.append(f"{step.step_key} is {step.status}; final events {finals}")
        if step.job_id is not None:
            if seen["step.queued"] != 1:
                problems.append(f"{step.step_key} has {seen['step.queued']} step.queued events")
            history = per_step[step.step_key]
            started = history.index("job.started") if "job.started" in history else len(history)
            if "step.queued" not in history[:started]:
                problems.append(f"{step.step_key}: job.started before step.queued")
        was_waiting = step.kind is StepKind.EXTERNAL and (
            step.status is StepStatus.WAITING or step.posted_at is not None
        )
        if was_waiting and seen["step.waiting"] != 1:
            problems.append(f"{step.step_key} has {seen['step.waiting']} step.waiting events")
    run_events = [k for k, key in kinds if k.startswith("run.") and key is None]
    if not run_events or run_events[0] != "run.enqueued":
        problems.append(f"run events {run_events} do not start with run.enqueued")
    retried_to = iter(
        RunStatus(e.data["to"])  # type: ignore[call-overload, index]
        for e in events
        if e.kind == "run.retried"
    )
    statuses = [
        next(retried_to) if k == "run.retried" else _RUN_EVENT_STATUS[k] for k in run_events[1:]
    ]
    if any(a == b for a, b in itertools.pairwise(statuses)):
        problems.append(f"run events repeat a status: {run_events}")
    if statuses and statuses[-1] is not run.status:
        problems.append(f"last run event {run_events[-1]} but the run is {run.status}")
    if run.status.is_terminal and not statuses:
        problems.append(f"run is {run.status} without a run event for it")
    assert not problems, f"run {run_id} events:\n  " + "\n  ".join(problems)
    return kinds


def queued_before_enqueued(kinds: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The events with each released step's ``job.enqueued, step.queued`` pair put in the
    order enqueue writes it (``step.queued`` first); both are written in one transaction."""
    out = list(kinds)
    for i in range(len(out) - 1):
        (k1, s1), (k2, s2) = out[i], out[i + 1]
        if (k1, k2) == ("job.enqueued", "step.queued") and s1 == s2:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def check(conn: Conn, run_id: uuid.UUID) -> runledger.WorkflowRunRecord:
    """``check_run`` and ``check_events``."""
    check_events(conn, run_id)
    return check_run(conn, run_id)


def state(run: runledger.WorkflowRunRecord) -> tuple[RunStatus, dict[str, StepStatus]]:
    """The run's status and its steps' statuses, for compact assertions."""
    return run.status, {s.step_key: s.status for s in run.steps}


# --- tests ---------------------------------------------------------------------------------

S = StepStatus


def test_linear_chain_runs_step_by_step_and_outputs_flow_downstream(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("chain")
        .input({"order": 7})
        .step("a", job="a")
        .step("b", job="b", after="a")
        .step("c", job="c", after="b"),
    )
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.RUNNING, {"a": S.QUEUED, "b": S.BLOCKED, "c": S.BLOCKED})
    assert claim_jobs(conn, ["b", "c"]) == []

    a = claim_step(conn, run_id, "a")
    assert (a.upstream, a.workflow_input) == ({}, {"order": 7})
    assert state(check(autocommit_conn, run_id))[1]["a"] is S.RUNNING
    finish_job(conn, a, output={"n": 1})
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.RUNNING, {"a": S.SUCCEEDED, "b": S.QUEUED, "c": S.BLOCKED})
    assert run.step("a").output == {"n": 1}

    b = claim_step(conn, run_id, "b")
    assert (b.upstream, b.workflow_input) == ({"a": {"n": 1}}, {"order": 7})
    check(autocommit_conn, run_id)
    finish_job(conn, b, output={"n": 2})
    check(autocommit_conn, run_id)

    c = claim_step(conn, run_id, "c")
    assert c.upstream == {"b": {"n": 2}}  # direct prerequisites only
    finish_job(conn, c, output=[3])
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.SUCCEEDED,
        {"a": S.SUCCEEDED, "b": S.SUCCEEDED, "c": S.SUCCEEDED},
    )
    assert (run.steps_open, run.steps_active, run.steps_unsuccessful) == (0, 0, 0)
    assert run.finished_at is not None
    assert run.result is None  # no result step named

    kinds = check_events(autocommit_conn, run_id)
    for key in ("a", "b", "c"):
        # Released or enqueued, a step is queued before its job is (cause before effect).
        assert [k for k, step in kinds if step == key] == [
            "step.queued",
            "job.enqueued",
            "job.started",
            "job.succeeded",
            "step.succeeded",
        ]
    assert [k for k, step in kinds if step is None] == ["run.enqueued", "run.succeeded"]
    assert kinds[-1] == ("run.succeeded", None)


def test_diamond_releases_the_fan_in_only_after_both_branches(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("diamond")
        .step("a", job="a")
        .step("b", job="b", after="a")
        .step("c", job="c", after="a")
        .step("d", job="d", after=["b", "c"]),
    )
    run_step(conn, run_id, "a", output="A")
    run = check(autocommit_conn, run_id)
    assert {k: s for k, s in state(run)[1].items()} == {
        "a": S.SUCCEEDED, "b": S.QUEUED, "c": S.QUEUED, "d": S.BLOCKED,
    }  # fmt: skip
    assert run.step("d").deps_pending == 2

    run_step(conn, run_id, "c", output="C")
    run = check(autocommit_conn, run_id)
    assert run.step("d").status is S.BLOCKED
    assert run.step("d").deps_pending == 1
    assert job_rows(autocommit_conn, run_id, "d") == 0

    run_step(conn, run_id, "b", output="B")
    assert check(autocommit_conn, run_id).step("d").status is S.QUEUED
    d = claim_step(conn, run_id, "d")
    assert d.upstream == {"b": "B", "c": "C"}
    finish_job(conn, d)
    assert check(autocommit_conn, run_id).status is RunStatus.SUCCEEDED
    assert job_rows(autocommit_conn, run_id, "d") == 1


def test_after_terminal_dependent_runs_after_its_prerequisite_fails(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("cleanup")
        .step("work", job="work")
        .step("cleanup", job="cleanup", after_terminal="work"),
    )
    run_step(conn, run_id, "work", JobStatus.FAILED)
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.RUNNING, {"work": S.FAILED, "cleanup": S.QUEUED})
    assert run.step("work").error == "StepError: work broke"
    assert run.steps_unsuccessful == 1

    cleanup = claim_step(conn, run_id, "cleanup")
    assert cleanup.upstream == {"work": None}  # a failed prerequisite has no output
    finish_job(conn, cleanup, output="tidy")
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.COMPLETED_WITH_ERRORS,
        {"work": S.FAILED, "cleanup": S.SUCCEEDED},
    )


def test_after_terminal_dependent_runs_after_its_prerequisite_is_cancelled(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("cleanup")
        .step("work", job="work")
        .step("then", job="then", after="work")
        .step("cleanup", job="cleanup", after_terminal="then"),
    )
    run_step(conn, run_id, "work", JobStatus.FAILED)
    # "then" is cancelled by the cascade, and that releases its after_terminal dependent.
    run = check(autocommit_conn, run_id)
    assert state(run)[1] == {"work": S.FAILED, "then": S.CANCELLED, "cleanup": S.QUEUED}
    run_step(conn, run_id, "cleanup")
    assert check(autocommit_conn, run_id).status is RunStatus.COMPLETED_WITH_ERRORS


def test_failed_prerequisite_cancels_its_dependents_transitively_and_other_branches_go_on(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("cascade")
        .step("a", job="a")
        .step("b", job="b", after="a")
        .step("c", job="c", after="b")
        .step("x", external=True, after="b")
        .step("join", job="join", after=["c", "y"])
        .step("y", job="y")
        .step("z", job="z", after="y"),
    )
    y = claim_step(conn, run_id, "y")  # the independent branch is running meanwhile
    run_step(conn, run_id, "a", JobStatus.FAILED)
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.RUNNING,
        {
            "a": S.FAILED, "b": S.CANCELLED, "c": S.CANCELLED, "x": S.CANCELLED,
            "join": S.CANCELLED, "y": S.RUNNING, "z": S.BLOCKED,
        },
    )  # fmt: skip
    assert run.steps_unsuccessful == 5
    assert run.step("b").error == "a prerequisite failed or was cancelled"
    for key in ("b", "c", "join"):
        assert job_rows(autocommit_conn, run_id, key) == 0

    finish_job(conn, y)
    run = check(autocommit_conn, run_id)
    assert run.step("z").status is S.QUEUED
    assert run.step("join").status is S.CANCELLED  # y's success does not revive it
    assert job_rows(autocommit_conn, run_id, "join") == 0
    run_step(conn, run_id, "z")
    run = check(autocommit_conn, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert (run.steps_open, run.steps_active, run.steps_unsuccessful) == (0, 0, 5)


def test_run_goes_running_then_waiting_on_external_steps_then_succeeded(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("approval")
        .step("prepare", job="prepare")
        .step("approve", external=True, after="prepare"),
    )
    assert check(autocommit_conn, run_id).status is RunStatus.RUNNING
    run_step(conn, run_id, "prepare")
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.WAITING, {"prepare": S.SUCCEEDED, "approve": S.WAITING})
    assert (run.steps_open, run.steps_active) == (1, 0)
    assert run.finished_at is None

    assert runledger.complete_external_step(conn, run_id, "approve", output={"ok": True})
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.SUCCEEDED, {"prepare": S.SUCCEEDED, "approve": S.SUCCEEDED})
    run_events = [k for k, key in check_events(autocommit_conn, run_id) if k.startswith("run.")]
    assert run_events == ["run.enqueued", "run.waiting", "run.succeeded"]


def test_external_completion_that_releases_a_job_resumes_the_run(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("signal-first")
        .step("signal", external=True)
        .step("work", job="work", after="signal"),
    )
    run = check(autocommit_conn, run_id)
    assert state(run) == (RunStatus.WAITING, {"signal": S.WAITING, "work": S.BLOCKED})

    runledger.complete_external_step(conn, run_id, "signal", output=5)
    conn.commit()
    assert state(check(autocommit_conn, run_id)) == (
        RunStatus.RUNNING,
        {"signal": S.SUCCEEDED, "work": S.QUEUED},
    )
    work = claim_step(conn, run_id, "work")
    assert work.upstream == {"signal": 5}
    finish_job(conn, work)
    assert check(autocommit_conn, run_id).status is RunStatus.SUCCEEDED
    run_events = [k for k, key in check_events(autocommit_conn, run_id) if k.startswith("run.")]
    assert run_events == ["run.enqueued", "run.resumed", "run.succeeded"]


def test_run_completes_with_errors_when_a_step_failed(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = enqueue(
        conn, WorkflowBuilder("errors").step("bad", job="bad").step("good", job="good")
    )
    run_step(conn, run_id, "good")
    assert check(autocommit_conn, run_id).status is RunStatus.RUNNING
    run_step(conn, run_id, "bad", JobStatus.FAILED)
    run = check(autocommit_conn, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert (run.steps_open, run.steps_active, run.steps_unsuccessful) == (0, 0, 1)
    assert run.finished_at is not None
    assert check_events(autocommit_conn, run_id)[-1] == ("run.completed_with_errors", None)


def test_run_completes_with_errors_when_a_step_was_cancelled(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn, WorkflowBuilder("errors").step("dropped", job="dropped").step("good", job="good")
    )
    job_id = runledger.get_workflow_run(conn, run_id).step("dropped").job_id
    assert job_id is not None
    assert runledger.cancel_job(conn, job_id, reason="not needed")
    conn.commit()
    assert check(autocommit_conn, run_id).status is RunStatus.RUNNING
    run_step(conn, run_id, "good")
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.COMPLETED_WITH_ERRORS,
        {"dropped": S.CANCELLED, "good": S.SUCCEEDED},
    )


def test_result_step_output_becomes_the_run_result(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("result")
        .result_step("total")
        .step("part", job="part")
        .step("total", job="total", after="part")
        .step("audit", job="audit", after="part"),
    )
    run_step(conn, run_id, "part", output=1)
    run_step(conn, run_id, "total", output={"sum": 41, "items": [1, 2]})
    run = check(autocommit_conn, run_id)
    assert run.status is RunStatus.RUNNING
    run_step(conn, run_id, "audit", output="ignored")
    run = check(autocommit_conn, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.result == {"sum": 41, "items": [1, 2]}


def test_failed_result_step_leaves_the_result_empty(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = enqueue(
        conn, WorkflowBuilder("result").result_step("total").step("total", job="total")
    )
    run_step(conn, run_id, "total", JobStatus.FAILED)
    run = check(autocommit_conn, run_id)
    assert (run.status, run.result) == (RunStatus.COMPLETED_WITH_ERRORS, None)


def test_retry_moves_the_step_back_to_queued_and_the_run_stays_running(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("retry")
        .step("flaky", job="flaky", max_attempts=3)
        .step("after", job="after", after="flaky")
        .step("signal", external=True),
    )
    first = claim_step(conn, run_id, "flaky")
    assert first.attempt == 1
    report = finish_job(conn, first, JobStatus.QUEUED)
    assert [f.status for f in report.finished] == [JobStatus.QUEUED]
    assert report.workflow.steps == () and report.workflow.runs == ()
    run = check(autocommit_conn, run_id)
    # The external step is waiting, but a job step is still queued: running, not waiting.
    assert state(run) == (
        RunStatus.RUNNING,
        {"flaky": S.QUEUED, "after": S.BLOCKED, "signal": S.WAITING},
    )
    assert (run.steps_open, run.steps_active, run.steps_unsuccessful) == (3, 1, 0)
    job = runledger.get_job(autocommit_conn, first.id)
    assert (job.status, job.attempt, job.last_error) == (
        JobStatus.QUEUED,
        1,
        "StepError: flaky broke",
    )

    second = claim_step(conn, run_id, "flaky")
    assert (second.id, second.attempt) == (first.id, 2)
    assert check(autocommit_conn, run_id).step("flaky").status is S.RUNNING
    finish_job(conn, second, output="finally")
    run = check(autocommit_conn, run_id)
    assert state(run)[1] == {"flaky": S.SUCCEEDED, "after": S.QUEUED, "signal": S.WAITING}
    assert job_rows(autocommit_conn, run_id, "flaky") == 1
    flaky_events = [k for k, key in check_events(autocommit_conn, run_id) if key == "flaky"]
    assert flaky_events == [
        "step.queued",
        "job.enqueued",
        "job.started",
        "job.retrying",
        "job.started",
        "job.succeeded",
        "step.succeeded",
    ]
    outcomes = [a.outcome for a in runledger.list_attempts(autocommit_conn, first.id)]
    assert outcomes == [AttemptOutcome.FAILED, AttemptOutcome.SUCCEEDED]


def test_last_attempt_failing_fails_the_step_and_cancels_its_dependents(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("exhausted")
        .step("flaky", job="flaky", max_attempts=2)
        .step("after", job="after", after="flaky"),
    )
    finish_job(conn, claim_step(conn, run_id, "flaky"), JobStatus.QUEUED)
    assert check(autocommit_conn, run_id).step("flaky").status is S.QUEUED
    finish_job(conn, claim_step(conn, run_id, "flaky"), JobStatus.FAILED)
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.COMPLETED_WITH_ERRORS,
        {"flaky": S.FAILED, "after": S.CANCELLED},
    )


def test_fan_out_of_200_into_one_fan_in_releases_it_exactly_once(
    dsn: str, conn: Conn, autocommit_conn: Conn
) -> None:
    parts = [f"p{i:03d}" for i in range(200)]
    builder = WorkflowBuilder("fan").result_step("join")
    for key in parts:
        builder.step(key, job="fan.part", payload={"i": key})
    builder.step("join", job="fan.join", after=parts)
    run_id = enqueue(conn, builder)
    jobs = claim_jobs(conn, ["fan.part"])
    assert len(jobs) == 200
    check_run(autocommit_conn, run_id)

    batches: queue.SimpleQueue[Sequence[ClaimedJob]] = queue.SimpleQueue()
    for start in range(0, 200, 20):
        batches.put(jobs[start : start + 20])
    start_together = threading.Barrier(4)
    errors: list[BaseException] = []
    lost: list[uuid.UUID] = []

    def completer() -> None:
        try:
            with psycopg.connect(dsn) as own:
                start_together.wait(timeout=10)
                while True:
                    try:
                        batch = batches.get_nowait()
                    except queue.Empty:
                        return
                    report = finish(own, [result(j, output={"part": j.step_key}) for j in batch])
                    own.commit()
                    lost.extend(report.lost)
        except BaseException as err:  # re-raised in the test thread
            errors.append(err)

    threads = [threading.Thread(target=completer, name=f"completer-{n}") for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert lost == []

    run = check(autocommit_conn, run_id)
    assert run.step("join").status is S.QUEUED
    assert job_rows(autocommit_conn, run_id, "join") == 1
    released = [
        e for e in runledger.list_events(autocommit_conn, run_id=run_id) if e.step_key == "join"
    ]
    assert [str(e.kind) for e in released] == ["step.queued", "job.enqueued"]
    (join,) = claim_jobs(conn, ["fan.join"])
    assert join.upstream == {key: {"part": key} for key in parts}
    finish_job(conn, join, output={"parts": 200})
    run = check(autocommit_conn, run_id)
    assert (run.status, run.result) == (RunStatus.SUCCEEDED, {"parts": 200})
    check_events(autocommit_conn, run_id)


def test_root_external_steps_start_the_run_waiting(conn: Conn, autocommit_conn: Conn) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("signals")
        .step("one", external=True)
        .step("two", external=True)
        .step("both", job="both", after=["one", "two"]),
    )
    run = check(autocommit_conn, run_id)
    assert state(run) == (
        RunStatus.WAITING,
        {"one": S.WAITING, "two": S.WAITING, "both": S.BLOCKED},
    )
    runledger.complete_external_step(conn, run_id, "one")
    conn.commit()
    assert check(autocommit_conn, run_id).status is RunStatus.WAITING
    runledger.complete_external_step(conn, run_id, "two")
    conn.commit()
    assert check(autocommit_conn, run_id).status is RunStatus.RUNNING
    run_step(conn, run_id, "both")
    assert check(autocommit_conn, run_id).status is RunStatus.SUCCEEDED


def test_ledger_orders_a_steps_success_before_the_release_it_causes(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn, WorkflowBuilder("chain").step("a", job="a").step("b", job="b", after="a")
    )
    run_step(conn, run_id, "a")
    kinds = queued_before_enqueued(check_events(autocommit_conn, run_id))
    assert kinds == [
        ("run.enqueued", None),
        ("step.queued", "a"),
        ("job.enqueued", "a"),
        ("job.started", "a"),
        ("job.succeeded", "a"),
        ("step.succeeded", "a"),
        ("step.queued", "b"),
        ("job.enqueued", "b"),
    ]


def test_an_external_result_step_gives_the_run_its_result(
    conn: Conn, autocommit_conn: Conn
) -> None:
    run_id = enqueue(
        conn,
        WorkflowBuilder("approved")
        .result_step("approve")
        .step("prepare", job="prepare")
        .step("approve", external=True, after="prepare"),
    )
    run_step(conn, run_id, "prepare", output="draft")
    runledger.complete_external_step(conn, run_id, "approve", output={"by": "ann"})
    conn.commit()
    run = check(autocommit_conn, run_id)
    assert (run.status, run.result) == (RunStatus.SUCCEEDED, {"by": "ann"})
