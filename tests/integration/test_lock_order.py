"""The lock order (runledger/postgres/workflow.py), interleaved deterministically.

Each test is named after a pair of paths ``<first>_then_<second>`` on one run. Connection A
runs the first path inside its own transaction and stops before COMMIT, so it holds every lock
the path takes. A thread then runs the second path on connection B, and the test observes B
waiting in ``pg_stat_activity`` (``wait_event_type = 'Lock'``), or, where the design says the
path never waits (claim and reaper use SKIP LOCKED), observes B returning while A still holds
its locks. Then A commits, B finishes, and the run must be coherent (``check_run``).

The run of most tests (``shared_run``)::

    a (job, running, 2 attempts) --> after_a (job)
    a, b (job, running, 1 attempt), x (external, waiting) --> join (job)

so the paths meet on a job row, on step ``x``, on the fan-in step ``join`` or on the run row.
"""

from __future__ import annotations

import datetime
import importlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import psycopg
import pytest
from test_workflow_engine import (
    check,
    check_run,
    claim_jobs,
    claim_step,
    enqueue,
    job_rows,
    result,
    run_step,
    state,
)

import runledger
from runledger import AttemptOutcome, JobStatus, RunStatus, StepStatus, WorkflowBuilder
from runledger.errors import StepNotWaiting
from runledger.postgres.attempts import (
    AttemptResult,
    ClaimedJob,
    Expired,
    FinishReport,
    finish,
    lock_expired,
    renew_leases,
)
from runledger.postgres.ids import new_id
from runledger.postgres.retention import prune_runs

Conn = psycopg.Connection[Any]
Op = Callable[[Conn], Any]
S = StepStatus

WAIT_SECONDS = 10.0
# Connections that run path B (or hold locks for a test) give up waiting after this, so that
# a failing test cannot leave a thread blocked behind A forever (closing a connection waits
# for the query another thread runs on it).
B_OPTIONS = "-c lock_timeout=20s"


def connect_b(dsn: str) -> Conn:
    """A connection for path B or a lock holder."""
    return psycopg.connect(dsn, options=B_OPTIONS)


# --- the harness -------------------------------------------------------------------------


class Background:
    """Runs one path on connection B in a thread and commits; keeps its value or error."""

    def __init__(self, conn: Conn, op: Op) -> None:
        self.conn = conn
        self.pid = conn.info.backend_pid
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(op,), name="path-b", daemon=True)
        self._thread.start()

    def _run(self, op: Op) -> None:
        try:
            self.value = op(self.conn)
            self.conn.commit()
        except BaseException as err:  # handed to the test thread by result()
            self.error = err
            if not self.conn.closed:
                self.conn.rollback()
        finally:
            self.done.set()

    def result(self, timeout: float = WAIT_SECONDS) -> Any:
        """B's value once it has committed; B's exception re-raised."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "path B did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def wait_for_lock_wait(observer: Conn, b: Background) -> str:
    """Poll pg_stat_activity until B waits on a lock; return the statement it waits in.

    A row of pg_stat_activity is not one snapshot: the query text comes from a copy of the
    backends' status taken when the view is first read, the wait event from the backend
    itself a moment later. On a busy machine B can move on from its previous statement and
    block in the next one in between, so the row pairs the wait with the old text. Once B
    is seen waiting, a second read (whose copy is taken after B began to wait) names the
    statement it waits in.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if b.done.is_set():
            pytest.fail(f"path B finished without waiting for A (value {b.value!r}, {b.error!r})")
        if _waiting_in(observer, b) is not None:
            query = _waiting_in(observer, b)  # the second read, see above
            if query is not None:
                return query
        time.sleep(0.005)
    pytest.fail("path B was never seen waiting on a lock")


def _waiting_in(observer: Conn, b: Background) -> str | None:
    """The statement B is in if pg_stat_activity shows it waiting on a lock, else None."""
    row = observer.execute(
        "select wait_event_type, query from pg_stat_activity where pid = %s", (b.pid,)
    ).fetchone()
    return str(row[1]) if row is not None and row[0] == "Lock" else None


def returns_without_waiting(b: Background) -> Any:
    """B's value, which it must have produced while A still holds its locks."""
    assert b.done.wait(WAIT_SECONDS), "path B blocked although it must never wait"
    return b.result()


@pytest.fixture
def other(dsn: str) -> Iterator[Conn]:
    """Connection B."""
    with connect_b(dsn) as connection:
        yield connection


@pytest.fixture
def observer(autocommit_conn: Conn) -> Conn:
    """Sees committed rows only; reads pg_stat_activity."""
    return autocommit_conn


# --- the paths ---------------------------------------------------------------------------


def finish_path(job: ClaimedJob, status: JobStatus = JobStatus.SUCCEEDED) -> Op:
    """Job completion: the handler's outcome written with its lease."""
    return lambda c: finish(c, [result(job, status, output={"from": job.step_key})])


def cancel_job_path(job_id: uuid.UUID) -> Op:
    return lambda c: runledger.cancel_job(c, job_id, reason="cancel_job")


def cancel_workflow_path(run_id: uuid.UUID) -> Op:
    return lambda c: runledger.cancel_workflow(c, run_id, reason="cancel_workflow")


def external_path(run_id: uuid.UUID, key: str) -> Op:
    return lambda c: runledger.complete_external_step(c, run_id, key, output={"from": key})


def reap_result(expired: Expired) -> AttemptResult:
    """What the reaper writes: retry while attempts remain, else dead-letter."""
    retry = expired.attempt < expired.max_attempts
    return AttemptResult(
        job_id=expired.id,
        lease_token=expired.lease_token,
        status=JobStatus.QUEUED if retry else JobStatus.FAILED,
        outcome=expired.outcome,
        error_type="LeaseExpired",
        error_message="the lease expired",
    )


@attrs.frozen
class Reaped:
    expired: tuple[uuid.UUID, ...]
    report: FinishReport


def reap(conn: Conn) -> Reaped:
    """The reaper's transaction: lock expired leases (SKIP LOCKED), then finish them."""
    expired = lock_expired(conn)
    return Reaped(tuple(e.id for e in expired), finish(conn, [reap_result(e) for e in expired]))


def expire(observer: Conn, job_id: uuid.UUID) -> None:
    """Put a running job's lease in the past, as if its worker died."""
    updated = observer.execute(
        "update runledger.jobs set lease_expires_at = now() - interval '1 minute' "
        "where id = %s and status = 'running'",
        (job_id,),
    ).rowcount
    assert updated == 1


@attrs.frozen
class Shared:
    run_id: uuid.UUID
    a: ClaimedJob
    b: ClaimedJob


def shared_run(conn: Conn) -> Shared:
    run_id = enqueue(
        conn,
        WorkflowBuilder("locks")
        .step("a", job="a", max_attempts=2)
        .step("b", job="b", max_attempts=1)
        .step("x", external=True)
        .step("after_a", job="after_a", after="a")
        .step("join", job="join", after=["a", "b", "x"]),
    )
    return Shared(run_id, claim_step(conn, run_id, "a"), claim_step(conn, run_id, "b"))


def statuses(observer: Conn, run_id: uuid.UUID) -> tuple[RunStatus, dict[str, StepStatus]]:
    return state(check(observer, run_id))


def job_status(observer: Conn, job_id: uuid.UUID) -> JobStatus:
    return runledger.get_job(observer, job_id).status


# --- job completion x cancel_workflow ------------------------------------------------------


def test_finish_then_cancel_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    report = finish_path(s.a)(conn)  # releases after_a: a new job row, uncommitted
    assert report.lost == ()
    b = Background(other, cancel_workflow_path(s.run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # on a's job row
    conn.commit()
    assert b.result() is True

    assert statuses(observer, s.run_id) == (
        RunStatus.CANCELLED,
        {
            "a": S.SUCCEEDED, "b": S.CANCELLED, "x": S.CANCELLED, "after_a": S.CANCELLED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip
    # The job released while the cancel waited was cancelled too (locked late, NOWAIT).
    after_a = runledger.get_workflow_run(observer, s.run_id).step("after_a").job_id
    assert after_a is not None
    assert job_status(observer, after_a) is JobStatus.CANCELLED
    assert job_rows(observer, s.run_id, "join") == 0
    assert claim_jobs(conn, ["after_a", "join"]) == []


def test_cancel_workflow_then_finish(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_workflow_path(s.run_id)(conn) is True
    b = Background(other, finish_path(s.a))
    wait_for_lock_wait(observer, b)
    conn.commit()
    report = b.result()
    assert (report.finished, report.lost) == ((), (s.a.id,))

    run_status, steps = statuses(observer, s.run_id)
    assert run_status is RunStatus.CANCELLED
    assert set(steps.values()) == {S.CANCELLED}
    assert job_rows(observer, s.run_id, "after_a") == 0  # never re-enqueued
    assert job_status(observer, s.a.id) is JobStatus.CANCELLED


# --- job completion x cancel_job -------------------------------------------------------------


def test_finish_then_cancel_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish_path(s.a)(conn)
    b = Background(other, cancel_job_path(s.b.id))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result() is True
    assert statuses(observer, s.run_id) == (
        RunStatus.RUNNING,
        {
            "a": S.SUCCEEDED, "b": S.CANCELLED, "x": S.WAITING, "after_a": S.QUEUED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip


def test_cancel_job_then_finish(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_job_path(s.b.id)(conn) is True  # cancels join
    b = Background(other, finish_path(s.a))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    report = b.result()
    assert report.lost == ()
    assert statuses(observer, s.run_id) == (
        RunStatus.RUNNING,
        {
            "a": S.SUCCEEDED, "b": S.CANCELLED, "x": S.WAITING, "after_a": S.QUEUED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip
    assert job_rows(observer, s.run_id, "join") == 0


def test_finish_then_cancel_job_of_the_same_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish_path(s.a)(conn)
    b = Background(other, cancel_job_path(s.a.id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result() is False  # it had finished
    assert job_status(observer, s.a.id) is JobStatus.SUCCEEDED
    assert statuses(observer, s.run_id)[1]["after_a"] is S.QUEUED


def test_cancel_job_then_finish_of_the_same_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_job_path(s.a.id)(conn) is True
    b = Background(other, finish_path(s.a))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result().lost == (s.a.id,)
    steps = statuses(observer, s.run_id)[1]
    assert (steps["a"], steps["after_a"], steps["join"]) == (S.CANCELLED,) * 3
    assert job_rows(observer, s.run_id, "after_a") == 0


# --- job completion x reap -------------------------------------------------------------------


def test_finish_then_reap(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.b.id)
    finish_path(s.a)(conn)
    b = Background(other, reap)
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # b's cascade, on join
    conn.commit()
    reaped = b.result()
    assert reaped.expired == (s.b.id,)
    assert statuses(observer, s.run_id) == (
        RunStatus.RUNNING,
        {
            "a": S.SUCCEEDED, "b": S.FAILED, "x": S.WAITING, "after_a": S.QUEUED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip
    attempts = runledger.list_attempts(observer, s.b.id)
    assert [x.outcome for x in attempts] == [AttemptOutcome.LEASE_EXPIRED]


def test_finish_then_reap_of_the_same_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.a.id)
    finish_path(s.a)(conn)  # the worker was slow, but its lease token still holds
    b = Background(other, reap)
    assert returns_without_waiting(b).expired == ()  # SKIP LOCKED: a is A's
    conn.commit()
    assert job_status(observer, s.a.id) is JobStatus.SUCCEEDED
    assert reap(other).expired == ()  # and the completion is not overwritten later
    other.commit()
    assert statuses(observer, s.run_id)[1]["after_a"] is S.QUEUED


def test_reap_then_finish(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.a.id)
    reaped = reap(conn)  # a has a second attempt: back to queued
    assert reaped.expired == (s.a.id,)
    b = Background(other, finish_path(s.a))  # the presumed-dead worker reports late
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result().lost == (s.a.id,)
    job = runledger.get_job(observer, s.a.id)
    assert (job.status, job.attempt, job.output) == (JobStatus.QUEUED, 1, None)
    steps = statuses(observer, s.run_id)[1]
    assert (steps["a"], steps["after_a"]) == (S.QUEUED, S.BLOCKED)
    assert job_rows(observer, s.run_id, "after_a") == 0


# --- job completion x external completion ------------------------------------------------------


def test_finish_then_external_completion(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish_path(s.a)(conn)
    b = Background(other, external_path(s.run_id, "x"))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result() is True
    run = check(observer, s.run_id)
    assert run.step("join").status is S.BLOCKED
    assert run.step("join").deps_pending == 1  # both decrements count
    run_step(conn, s.run_id, "after_a")
    finish(conn, [result(s.b)])
    conn.commit()
    assert check(observer, s.run_id).step("join").status is S.QUEUED


def test_external_completion_then_finish(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert external_path(s.run_id, "x")(conn) is True
    b = Background(other, finish_path(s.a))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result().lost == ()
    run = check(observer, s.run_id)
    assert (run.step("join").status, run.step("join").deps_pending) == (S.BLOCKED, 1)
    assert run.step("after_a").status is S.QUEUED


# --- cancel_workflow x cancel_job --------------------------------------------------------------


def test_cancel_workflow_then_cancel_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_workflow_path(s.run_id)(conn) is True
    b = Background(other, cancel_job_path(s.a.id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result() is False
    run = check(observer, s.run_id)
    assert run.status is RunStatus.CANCELLED
    assert runledger.get_job(observer, s.a.id).cancel_reason == "cancel_workflow"


def test_cancel_job_then_cancel_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_job_path(s.a.id)(conn) is True
    b = Background(other, cancel_workflow_path(s.run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result() is True
    run = check(observer, s.run_id)
    assert run.status is RunStatus.CANCELLED
    assert set(state(run)[1].values()) == {S.CANCELLED}
    assert runledger.get_job(observer, s.a.id).cancel_reason == "cancel_job"
    assert runledger.get_job(observer, s.b.id).cancel_reason == "cancel_workflow"


# --- cancel_workflow x reap --------------------------------------------------------------------


def test_cancel_workflow_then_reap(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.b.id)
    assert cancel_workflow_path(s.run_id)(conn) is True
    b = Background(other, reap)
    assert returns_without_waiting(b).expired == ()  # SKIP LOCKED
    conn.commit()
    assert reap(other).expired == ()  # cancelled: nothing left to reap
    other.commit()
    assert check(observer, s.run_id).status is RunStatus.CANCELLED
    assert job_status(observer, s.b.id) is JobStatus.CANCELLED


def test_reap_then_cancel_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.b.id)
    assert reap(conn).expired == (s.b.id,)  # dead-lettered: join is cancelled
    b = Background(other, cancel_workflow_path(s.run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # on b's job row
    conn.commit()
    assert b.result() is True
    assert statuses(observer, s.run_id) == (
        RunStatus.CANCELLED,
        {
            "a": S.CANCELLED, "b": S.FAILED, "x": S.CANCELLED, "after_a": S.CANCELLED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip


# --- cancel_workflow x external completion -----------------------------------------------------


def test_cancel_workflow_then_external_completion(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_workflow_path(s.run_id)(conn) is True
    b = Background(other, external_path(s.run_id, "x"))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on x
    conn.commit()
    with pytest.raises(StepNotWaiting) as caught:
        b.result()
    assert caught.value.status == "cancelled"
    assert check(observer, s.run_id).status is RunStatus.CANCELLED


def test_external_completion_then_cancel_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert external_path(s.run_id, "x")(conn) is True
    b = Background(other, cancel_workflow_path(s.run_id))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on x
    conn.commit()
    assert b.result() is True
    assert statuses(observer, s.run_id) == (
        RunStatus.CANCELLED,
        {
            "a": S.CANCELLED, "b": S.CANCELLED, "x": S.SUCCEEDED, "after_a": S.CANCELLED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip


# --- cancel_job x reap -------------------------------------------------------------------------


def test_cancel_job_then_reap(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.b.id)
    assert cancel_job_path(s.a.id)(conn) is True
    b = Background(other, reap)
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # b's cascade, on join
    conn.commit()
    assert b.result().expired == (s.b.id,)
    assert statuses(observer, s.run_id) == (
        RunStatus.WAITING,
        {
            "a": S.CANCELLED, "b": S.FAILED, "x": S.WAITING, "after_a": S.CANCELLED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip


def test_cancel_job_then_reap_of_the_same_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.a.id)
    assert cancel_job_path(s.a.id)(conn) is True
    b = Background(other, reap)
    assert returns_without_waiting(b).expired == ()
    conn.commit()
    assert reap(other).expired == ()
    other.commit()
    assert job_status(observer, s.a.id) is JobStatus.CANCELLED
    check(observer, s.run_id)


def test_reap_then_cancel_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.b.id)
    assert reap(conn).expired == (s.b.id,)
    b = Background(other, cancel_job_path(s.a.id))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result() is True
    assert statuses(observer, s.run_id) == (
        RunStatus.WAITING,
        {
            "a": S.CANCELLED, "b": S.FAILED, "x": S.WAITING, "after_a": S.CANCELLED,
            "join": S.CANCELLED,
        },
    )  # fmt: skip


def test_reap_then_cancel_job_of_the_same_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.a.id)
    assert reap(conn).expired == (s.a.id,)  # retried: queued again
    b = Background(other, cancel_job_path(s.a.id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result() is True
    assert job_status(observer, s.a.id) is JobStatus.CANCELLED
    steps = statuses(observer, s.run_id)[1]
    assert (steps["a"], steps["after_a"], steps["join"]) == (S.CANCELLED,) * 3


# --- cancel_job x external completion ----------------------------------------------------------


def test_cancel_job_then_external_completion(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_job_path(s.a.id)(conn) is True
    b = Background(other, external_path(s.run_id, "x"))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result() is True
    steps = statuses(observer, s.run_id)[1]
    assert (steps["x"], steps["join"]) == (S.SUCCEEDED, S.CANCELLED)


def test_external_completion_then_cancel_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert external_path(s.run_id, "x")(conn) is True
    b = Background(other, cancel_job_path(s.b.id))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result() is True
    steps = statuses(observer, s.run_id)[1]
    assert (steps["x"], steps["b"], steps["join"]) == (S.SUCCEEDED, S.CANCELLED, S.CANCELLED)


# --- reap x external completion ----------------------------------------------------------------


def test_reap_then_external_completion(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.b.id)
    assert reap(conn).expired == (s.b.id,)
    b = Background(other, external_path(s.run_id, "x"))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result() is True
    steps = statuses(observer, s.run_id)[1]
    assert (steps["b"], steps["x"], steps["join"]) == (S.FAILED, S.SUCCEEDED, S.CANCELLED)


def test_external_completion_then_reap(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    expire(observer, s.b.id)
    assert external_path(s.run_id, "x")(conn) is True
    b = Background(other, reap)
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result().expired == (s.b.id,)
    steps = statuses(observer, s.run_id)[1]
    assert (steps["b"], steps["x"], steps["join"]) == (S.FAILED, S.SUCCEEDED, S.CANCELLED)


# --- the same path twice -----------------------------------------------------------------------


def test_finish_then_finish_into_the_same_fan_in(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish_path(s.a)(conn)
    b = Background(other, finish_path(s.b))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on join
    conn.commit()
    assert b.result().lost == ()
    run = check(observer, s.run_id)
    assert (run.step("join").status, run.step("join").deps_pending) == (S.BLOCKED, 1)
    runledger.complete_external_step(conn, s.run_id, "x")
    conn.commit()
    assert check(observer, s.run_id).step("join").status is S.QUEUED
    assert job_rows(observer, s.run_id, "join") == 1


def test_finish_then_finish_of_the_same_attempt(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish_path(s.a)(conn)
    b = Background(other, finish_path(s.a))  # a duplicate report of the same attempt
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result().lost == (s.a.id,)
    assert job_rows(observer, s.run_id, "after_a") == 1
    check(observer, s.run_id)


def test_cancel_workflow_then_cancel_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_workflow_path(s.run_id)(conn) is True
    b = Background(other, cancel_workflow_path(s.run_id))
    wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result() is False
    assert check(observer, s.run_id).status is RunStatus.CANCELLED
    events = runledger.list_events(observer, run_id=s.run_id)
    assert [str(e.kind) for e in events].count("run.cancelled") == 1


# --- claims (SKIP LOCKED) ----------------------------------------------------------------------


def claim_path(job_type: str) -> Op:
    return lambda c: runledger.postgres.attempts.claim(
        c, worker="b", queues=["default"], job_types=[job_type], limit=10, lease_seconds=30
    )


def test_finish_then_claim_of_the_released_job(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish_path(s.a)(conn)
    b = Background(other, claim_path("after_a"))
    assert returns_without_waiting(b) == []  # the release is not committed yet
    conn.commit()
    (claimed,) = claim_path("after_a")(other)
    other.commit()
    assert claimed.upstream == {"a": {"from": "a"}}
    check(observer, s.run_id)


def test_cancel_workflow_then_claim(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish(conn, [result(s.a)])
    conn.commit()  # after_a is queued
    assert cancel_workflow_path(s.run_id)(conn) is True
    b = Background(other, claim_path("after_a"))
    assert returns_without_waiting(b) == []  # SKIP LOCKED: the cancel holds the job
    conn.commit()
    assert claim_path("after_a")(other) == []
    other.commit()
    assert check(observer, s.run_id).status is RunStatus.CANCELLED


def test_claim_then_cancel_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    finish(conn, [result(s.a)])
    conn.commit()
    (claimed,) = claim_path("after_a")(conn)  # claim not yet committed
    b = Background(other, cancel_workflow_path(s.run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result() is True
    assert job_status(observer, claimed.id) is JobStatus.CANCELLED
    assert finish(conn, [result(claimed)]).lost == (claimed.id,)
    conn.commit()
    assert check(observer, s.run_id).status is RunStatus.CANCELLED


def test_cancel_workflow_retries_when_a_late_released_job_is_locked(
    conn: Conn, other: Conn, observer: Conn, dsn: str
) -> None:
    """The NOWAIT path: a job released after cancel_workflow locked the run's jobs is held
    by someone else (here a heartbeat) when the cancel reaches it; the cancel rolls back to its
    savepoint and starts again, then waits for that job in order."""
    s = shared_run(conn)
    with connect_b(dsn) as holder, connect_b(dsn) as heartbeat:
        # Stands in for any writer holding step x (below after_a in the lock order).
        holder.execute(
            "select 1 from runledger.workflow_step_runs "
            "where workflow_run_id = %s and step_key = 'x' for update",
            (s.run_id,),
        )
        finish_path(s.a)(conn)  # releases after_a, uncommitted
        b = Background(other, cancel_workflow_path(s.run_id))
        assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # a's job row
        conn.commit()  # after_a's job now exists, unseen by the cancel's job lock
        wait_until_statement(observer, b, "workflow_step_runs")  # waits on x
        (claimed,) = claim_path("after_a")(conn)
        conn.commit()
        assert renew_leases(heartbeat, [(claimed.id, claimed.lease_token, None)], lease_seconds=30)
        holder.commit()  # the cancel reaches after_a's job: locked by the heartbeat
        wait_until_statement(observer, b, "from only runledger.jobs")  # retried, waits in order
        heartbeat.commit()
        assert b.result() is True

    run = check(observer, s.run_id)
    assert run.status is RunStatus.CANCELLED
    assert job_status(observer, claimed.id) is JobStatus.CANCELLED
    assert finish(conn, [result(claimed)]).lost == (claimed.id,)
    conn.commit()


def wait_until_statement(observer: Conn, b: Background, text: str) -> None:
    """Poll until B waits on a lock inside a statement containing ``text``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        assert not b.done.is_set(), f"path B finished early: {b.value!r} {b.error!r}"
        query = _waiting_in(observer, b)
        if query is not None and text in query:
            return
        time.sleep(0.005)
    pytest.fail(f"path B never waited in a statement with {text!r}")


# --- paths on independent branches: they meet only on the run row -----------------------------


@attrs.frozen
class Independent:
    run_id: uuid.UUID
    jobs: dict[str, ClaimedJob]


def independent_run(conn: Conn) -> Independent:
    """Roots only, no edges: finish1/2 and reap1/2 running, cancel1/2 queued, x1/x2 waiting,
    and ``keep`` (external) so the run stays open."""
    builder = WorkflowBuilder("independent")
    for n in (1, 2):
        builder.step(f"finish{n}", job=f"finish{n}")
        builder.step(f"cancel{n}", job=f"cancel{n}")
        builder.step(f"reap{n}", job=f"reap{n}", max_attempts=1)
        builder.step(f"x{n}", external=True)
    builder.step("keep", external=True)
    run_id = enqueue(conn, builder)
    jobs = {key: claim_step(conn, run_id, key) for key in ("finish1", "finish2", "reap1", "reap2")}
    return Independent(run_id, jobs)


def independent_path(name: str, n: int, run: Independent, observer: Conn, conn: Conn) -> Op:
    if name == "finish":
        return finish_path(run.jobs[f"finish{n}"])
    if name == "cancel_job":
        job_id = runledger.get_workflow_run(observer, run.run_id).step(f"cancel{n}").job_id
        assert job_id is not None
        return cancel_job_path(job_id)
    if name == "reap":
        expire(observer, run.jobs[f"reap{n}"].id)
        return reap
    assert name == "external_completion"
    return external_path(run.run_id, f"x{n}")


PATHS = ("finish", "cancel_job", "reap", "external_completion")


@pytest.mark.parametrize(
    ("first", "second"),
    [(f, s) for f in PATHS for s in PATHS],
    ids=[f"{f}_then_{s}" for f in PATHS for s in PATHS],
)
def test_independent_branches(
    first: str, second: str, conn: Conn, other: Conn, observer: Conn
) -> None:
    run = independent_run(conn)
    independent_path(first, 1, run, observer, conn)(conn)
    b = Background(other, independent_path(second, 2, run, observer, other))
    assert "workflow_runs" in wait_for_lock_wait(observer, b)  # on the run row, last
    conn.commit()
    b.result()
    run_record = check_run(observer, run.run_id)
    settled = {"finish": S.SUCCEEDED, "cancel_job": S.CANCELLED, "reap": S.FAILED}
    steps = state(run_record)[1]
    for name, n in ((first, 1), (second, 2)):
        key = {"finish": "finish", "cancel_job": "cancel", "reap": "reap"}.get(name, "x") + str(n)
        assert steps[key] is settled.get(name, S.SUCCEEDED)


def test_finish_then_finish_of_the_last_two_steps_finishes_the_run(
    conn: Conn, other: Conn, observer: Conn
) -> None:
    run_id = enqueue(
        conn, WorkflowBuilder("pair").step("left", job="left").step("right", job="right")
    )
    left, right = claim_step(conn, run_id, "left"), claim_step(conn, run_id, "right")
    finish_path(left)(conn)
    b = Background(other, finish_path(right))
    assert "workflow_runs" in wait_for_lock_wait(observer, b)
    conn.commit()
    assert b.result().lost == ()
    assert set(state(runledger.get_workflow_run(observer, run_id))[1].values()) == {S.SUCCEEDED}
    # Both steps succeeded, so the run must have too; with the lost update it stays running
    # with steps_open = 1 forever.
    assert check_run(observer, run_id).status is RunStatus.SUCCEEDED


# --- completions spanning several runs (the completer and the reaper write in batches) -------


def test_finish_then_finish_of_batches_spanning_runs(
    conn: Conn, other: Conn, observer: Conn, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A releases jobs in runs ra and rb; B finishes jobs in rb, rx and ra; C holds rx.

    Run ids: rb < rx < ra, but ra's steps were inserted first (another process made its id a
    moment later and inserted it a moment earlier), so ra's released step sorts first.
    """

    def shape(name: str) -> WorkflowBuilder:
        return (
            WorkflowBuilder(name)
            .step("p", job="p")
            .step("r", job="r")
            .step("x", external=True)
            .step("d", job="d", after="p")
        )

    enqueuing = importlib.import_module("runledger.postgres.enqueue")
    late_id = uuid.UUID(int=new_id().int + (1 << 100))
    with monkeypatch.context() as patch:
        ids = iter([late_id])
        patch.setattr(enqueuing, "new_id", lambda: next(ids, None) or new_id())
        ra = enqueue(conn, shape("ra"))
    rb = enqueue(conn, shape("rb"))
    rx = enqueue(conn, shape("rx"))
    assert rb < rx < ra
    p = {run: claim_step(conn, run, "p") for run in (ra, rb)}
    r = {run: claim_step(conn, run, "r") for run in (ra, rb, rx)}
    # claim_step checks the run of each claim; the jobs of one type come in run order.

    with connect_b(dsn) as holder:
        external_path(rx, "x")(holder)  # C: an external completion in an open transaction
        b = Background(other, lambda c: finish(c, [result(j) for j in r.values()]))
        assert "workflow_runs" in wait_for_lock_wait(observer, b)  # holds rb, waits for rx
        with connect_b(dsn) as third:
            a = Background(third, lambda c: finish(c, [result(j) for j in p.values()]))
            wait_for_lock_wait(observer, a)  # holds ra (KEY SHARE), waits for rb
            holder.commit()  # B now takes rx, then wants ra
            errors = []
            for path in (a, b):
                try:
                    path.result()
                except psycopg.Error as err:
                    errors.append(err.sqlstate)
    assert errors == []  # "40P01" when the two deadlock
    for run in (ra, rb, rx):
        check_run(observer, run)


def test_cancel_workflow_then_claim_of_jobs_released_meanwhile(
    conn: Conn, other: Conn, observer: Conn, dsn: str
) -> None:
    """Jobs released after cancel_workflow locked the run's jobs are claimed while the cancel
    holds some of their steps: the claim waits for the step row (it skips only locked job
    rows), the cancel's NOWAIT on the claimed jobs fails and it starts again from its
    savepoint, the claim completes, and the cancel then takes the claimed jobs in order."""
    run_id = enqueue(
        conn,
        WorkflowBuilder("late")
        .step("a", job="a")
        .step("low", job="late", after="a")
        .step("mid", external=True)
        .step("high", job="late", after="a", priority=10),
    )
    a = claim_step(conn, run_id, "a")
    with connect_b(dsn) as holder, connect_b(dsn) as claimer:
        # Stands in for any writer holding step mid, between low and high in the lock order.
        holder.execute(
            "select 1 from runledger.workflow_step_runs "
            "where workflow_run_id = %s and step_key = 'mid' for update",
            (run_id,),
        )
        finish_path(a)(conn)  # releases low and high, uncommitted
        b = Background(other, cancel_workflow_path(run_id))
        assert "runledger.jobs" in wait_for_lock_wait(observer, b)
        conn.commit()
        wait_until_statement(observer, b, "workflow_step_runs")  # holds low, waits for mid
        c = Background(claimer, claim_path("late"))
        wait_for_lock_wait(observer, c)  # the claim waits for step low (skips only job rows)
        holder.commit()
        claimed = c.result()
        assert b.result() is True

    assert sorted(j.step_key for j in claimed) == ["high", "low"]
    for job in claimed:
        assert job_status(observer, job.id) is JobStatus.CANCELLED
    report = finish(conn, [result(j) for j in claimed])
    conn.commit()
    assert sorted(report.lost) == sorted(j.id for j in claimed)
    run = check(observer, run_id)
    assert state(run) == (
        RunStatus.CANCELLED,
        {"a": S.SUCCEEDED, "low": S.CANCELLED, "mid": S.CANCELLED, "high": S.CANCELLED},
    )


# --- retry_workflow ------------------------------------------------------------------------------


def retry_path(run_id: uuid.UUID) -> Op:
    return lambda c: runledger.retry_workflow(c, run_id)


def cancelled_shared_run(conn: Conn) -> Shared:
    """``shared_run`` cancelled (committed) while a and b ran."""
    s = shared_run(conn)
    assert cancel_workflow_path(s.run_id)(conn) is True
    conn.commit()
    return s


SHARED_RETRIED = {
    "a": S.QUEUED, "b": S.QUEUED, "x": S.WAITING, "after_a": S.BLOCKED, "join": S.BLOCKED,
}  # fmt: skip


def test_finish_then_retry_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    """The completion that finishes the run holds its job: the retry waits for it (jobs come
    first in the lock order), then finds the run finished and retries it."""
    run_id = enqueue(
        conn,
        WorkflowBuilder("retry.pair").step("p", job="p").step("q", job="q", max_attempts=1),
    )
    p = claim_step(conn, run_id, "p")
    run_step(conn, run_id, "q", JobStatus.FAILED)
    finish_path(p)(conn)  # the run is completed_with_errors in this transaction
    b = Background(other, retry_path(run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # on p's job row
    conn.commit()
    assert b.result() == ["q"]
    assert statuses(observer, run_id) == (RunStatus.RUNNING, {"p": S.SUCCEEDED, "q": S.QUEUED})


def test_retry_workflow_then_finish_of_an_attempt_the_cancel_ended(
    conn: Conn, other: Conn, observer: Conn
) -> None:
    """A late result of an attempt that the cancel ended stays fenced out while the retry
    commits and after: the retried job has no lease until a claim gives it a new one."""
    s = cancelled_shared_run(conn)
    assert retry_path(s.run_id)(conn) == ["a", "b", "x", "after_a", "join"]
    b = Background(other, finish_path(s.a))
    report = returns_without_waiting(b)  # the job is back in the hot table, uncommitted
    assert report.lost == (s.a.id,)
    conn.commit()
    assert finish(other, [result(s.a)]).lost == (s.a.id,)
    other.commit()
    assert statuses(observer, s.run_id) == (RunStatus.RUNNING, SHARED_RETRIED)
    assert job_status(observer, s.a.id) is JobStatus.QUEUED


def test_cancel_workflow_then_retry_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = shared_run(conn)
    assert cancel_workflow_path(s.run_id)(conn) is True
    b = Background(other, retry_path(s.run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # on a's job row
    conn.commit()
    assert b.result() == ["a", "b", "x", "after_a", "join"]
    assert statuses(observer, s.run_id) == (RunStatus.RUNNING, SHARED_RETRIED)
    assert (job_status(observer, s.a.id), job_status(observer, s.b.id)) == (
        JobStatus.QUEUED, JobStatus.QUEUED,
    )  # fmt: skip


def test_retry_workflow_then_cancel_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    """The cancel reads the run as finished (the retry has not committed) and returns False
    without waiting: it comes before the retry. A cancel after the commit cancels the run."""
    s = cancelled_shared_run(conn)
    retry_path(s.run_id)(conn)
    b = Background(other, cancel_workflow_path(s.run_id))
    assert returns_without_waiting(b) is False
    conn.commit()
    assert statuses(observer, s.run_id) == (RunStatus.RUNNING, SHARED_RETRIED)
    assert cancel_workflow_path(s.run_id)(other) is True
    other.commit()
    run_status, steps = statuses(observer, s.run_id)
    assert run_status is RunStatus.CANCELLED
    assert set(steps.values()) == {S.CANCELLED}


def test_retry_workflow_then_retry_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    s = cancelled_shared_run(conn)
    retry_path(s.run_id)(conn)
    b = Background(other, retry_path(s.run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # on a's job row
    conn.commit()
    with pytest.raises(runledger.errors.RunNotRetryable) as raised:
        b.result()
    assert raised.value.status == "running"
    assert statuses(observer, s.run_id) == (RunStatus.RUNNING, SHARED_RETRIED)
    events = runledger.list_events(observer, run_id=s.run_id)
    assert [str(e.kind) for e in events].count("run.retried") == 1


def test_retry_workflow_then_external_completion(conn: Conn, other: Conn, observer: Conn) -> None:
    s = cancelled_shared_run(conn)
    retry_path(s.run_id)(conn)  # x waits again, uncommitted
    b = Background(other, external_path(s.run_id, "x"))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on x
    conn.commit()
    assert b.result() is True
    assert statuses(observer, s.run_id) == (RunStatus.RUNNING, {**SHARED_RETRIED, "x": S.SUCCEEDED})


def test_external_completion_then_retry_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    """The signal that finishes the run holds its step: the retry waits for it (no job is
    involved), then finds the run finished."""
    run_id = enqueue(
        conn,
        WorkflowBuilder("retry.signal")
        .step("a", job="a", max_attempts=1)
        .step("x", external=True)
        .step("j", job="j", after=["a", "x"]),
    )
    run_step(conn, run_id, "a", JobStatus.FAILED)  # j is cancelled; the run waits for x
    assert external_path(run_id, "x")(conn) is True  # completes the run, uncommitted
    b = Background(other, retry_path(run_id))
    assert "workflow_step_runs" in wait_for_lock_wait(observer, b)  # on x
    conn.commit()
    assert b.result() == ["a", "j"]
    assert statuses(observer, run_id) == (
        RunStatus.RUNNING, {"a": S.QUEUED, "x": S.SUCCEEDED, "j": S.BLOCKED},
    )  # fmt: skip


def aged_failed_run(conn: Conn, observer: Conn) -> uuid.UUID:
    run_id = enqueue(conn, WorkflowBuilder("retry.old").step("f", job="f", max_attempts=1))
    run_step(conn, run_id, "f", JobStatus.FAILED)
    observer.execute(
        "update runledger.workflow_runs set finished_at = finished_at - interval '40 days' "
        "where id = %s",
        (run_id,),
    )
    return run_id


def prune_path(c: Conn) -> Any:
    return prune_runs(c, JobStatus.FAILED, datetime.timedelta(days=30))


def test_prune_then_retry_workflow(conn: Conn, other: Conn, observer: Conn) -> None:
    run_id = aged_failed_run(conn, observer)
    assert prune_path(conn).runs == 1
    b = Background(other, retry_path(run_id))
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # on f's job row
    conn.commit()
    with pytest.raises(runledger.errors.WorkflowRunNotFound):
        b.result()


def test_retry_workflow_then_prune(conn: Conn, other: Conn, observer: Conn) -> None:
    run_id = aged_failed_run(conn, observer)
    assert retry_path(run_id)(conn) == ["f"]
    b = Background(other, prune_path)
    assert "runledger.jobs" in wait_for_lock_wait(observer, b)  # on f's job row
    conn.commit()
    assert b.result().runs == 0  # open again: not the pruner's
    assert statuses(observer, run_id) == (RunStatus.RUNNING, {"f": S.QUEUED})
