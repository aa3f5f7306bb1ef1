"""The race hammer: many threads complete, retry, fail, cancel, reap and signal at random.

Six threads, each with its own connection and its own seeded ``random.Random``, pick among
claim, finish (success, retry, failure), heartbeat, cancel_job, cancel_workflow, external
completion or failure, and reap (leases put in the past by SQL, then ``lock_expired`` and
``finish``) on a population of about 40 live runs of small DAGs that is topped up as runs
finish. Afterwards everything left is driven to completion, and the tests check that no path
ever hit a deadlock (SQLSTATE 40P01), that nothing but the expected typed errors was raised,
and that every run ended final and coherent.

The hammer runs once per module (``RUNLEDGER_HAMMER_SECONDS``, default 20 s, and
``RUNLEDGER_HAMMER_SEED``); the tests read its report. The coherence checks here are SQL
over all runs, written independently of ``check_run`` in tests/integration.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import psycopg
import pytest
from _chaos import RUN_COUNTERS  # on sys.path through tests/chaos/conftest.py

import runledger
from runledger import AttemptOutcome, JobStatus, WorkflowBuilder
from runledger.errors import DatabaseError, ExternalStepConflict, StepNotWaiting
from runledger.postgres.attempts import (
    AttemptResult,
    ClaimedJob,
    Expired,
    claim,
    finish,
    lock_expired,
    renew_leases,
)
from runledger.testing import TemplateDatabases

Conn = psycopg.Connection[Any]

SECONDS = float(os.environ.get("RUNLEDGER_HAMMER_SECONDS", "20"))
SEED = int(os.environ.get("RUNLEDGER_HAMMER_SEED", "20261128"))
THREADS = 6
LIVE_RUNS = 40
JOB_TYPE = "hammer.work"
DEADLOCK = "40P01"
CHECK_VIOLATION = "23514"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 150)]

# Typed errors a path may raise by design when it loses a race (the step moved on).
EXPECTED = (StepNotWaiting, ExternalStepConflict)


def fan(n: int) -> WorkflowBuilder:
    parts = [f"part{i}" for i in range(2 + n % 5)]
    b = WorkflowBuilder("hammer.fan").result_step("ship").step("split", job=JOB_TYPE)
    for key in parts:
        b.step(key, job=JOB_TYPE, after="split", max_attempts=3)
    return (
        b.step("join", job=JOB_TYPE, after=parts)
        .step("approve", external=True, after="join")
        .step("ship", job=JOB_TYPE, after="approve")
        .step("cleanup", job=JOB_TYPE, after_terminal="join")
    )


def chain(n: int) -> WorkflowBuilder:
    return (
        WorkflowBuilder("hammer.chain")
        .step("c1", job=JOB_TYPE, max_attempts=2)
        .step("c2", job=JOB_TYPE, after="c1")
        .step("signal", external=True, after="c2")
        .step("c3", job=JOB_TYPE, after="signal", max_attempts=3)
        .step("c4", job=JOB_TYPE, after_terminal="c3")
    )


def diamond(n: int) -> WorkflowBuilder:
    return (
        WorkflowBuilder("hammer.diamond")
        .step("x", external=True)
        .step("a", job=JOB_TYPE)
        .step("b", job=JOB_TYPE, after="a")
        .step("c", job=JOB_TYPE, after="a")
        .step("d", job=JOB_TYPE, after=["b", "c", "x"])
        .step("e", job=JOB_TYPE, after_terminal="d")
    )


def wide(n: int) -> WorkflowBuilder:
    """Independent roots: completions meet only on the run row."""
    b = WorkflowBuilder("hammer.wide")
    for i in range(6):
        b.step(f"w{i}", job=JOB_TYPE, max_attempts=2)
    return b.step("y1", external=True).step("y2", external=True)


SHAPES: tuple[Callable[[int], WorkflowBuilder], ...] = (fan, chain, diamond, wide)


@attrs.define
class Tally:
    """What the threads did and met, merged under a lock."""

    ops: collections.Counter[str] = attrs.field(factory=collections.Counter)
    expected: collections.Counter[str] = attrs.field(factory=collections.Counter)
    deadlocks: int = 0
    deadlock_details: list[str] = attrs.field(factory=list)
    # CHECK violations on workflow_runs: the run counters went out of range (see below).
    counter_violations: list[str] = attrs.field(factory=list)
    unexpected: list[str] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def record(self, path: str, err: BaseException) -> None:
        """File a database error under deadlocks, run counter violations or unexpected."""
        where = f"{path}: {describe(err)}"
        cause = database_error(err)
        if cause is not None and cause.sqlstate == DEADLOCK:
            self.deadlocks += 1
            self.deadlock_details.append(where)
        elif (
            cause is not None
            and cause.sqlstate == CHECK_VIOLATION
            and cause.diag.table_name == "workflow_runs"
        ):
            self.counter_violations.append(where)
        else:
            self.unexpected.append(f"{where} ({type(err).__name__})")

    def merge(self, other: Tally) -> None:
        with self.lock:
            self.ops.update(other.ops)
            self.expected.update(other.expected)
            self.deadlocks += other.deadlocks
            self.deadlock_details.extend(other.deadlock_details)
            self.counter_violations.extend(other.counter_violations)
            self.unexpected.extend(other.unexpected)


def database_error(err: BaseException) -> psycopg.Error | None:
    """The psycopg error itself, or the one a runledger error wraps."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, psycopg.Error) and seen.sqlstate:
            return seen
        seen = seen.__cause__
    return None


def describe(err: BaseException) -> str:
    """The server's account of an error: message and detail (for a deadlock, the cycle)."""
    cause = database_error(err)
    if cause is None:
        return str(err)
    return f"{cause.diag.message_primary}\n{cause.diag.message_detail}"


class Hammer:
    """One thread's loop: a random path per iteration, every error classified."""

    def __init__(self, dsn: str, n: int, stop: threading.Event, runs: RunPool) -> None:
        self.rng = random.Random(SEED * 100 + n)
        self.dsn = dsn
        self.stop = stop
        self.runs = runs
        self.tally = Tally()
        self.held: list[ClaimedJob] = []
        self.name = f"hammer-{n}"

    def run(self) -> None:
        with psycopg.connect(self.dsn) as conn:
            paths: list[tuple[Callable[[Conn], None], int]] = [
                (self.claim, 20),
                (self.finish, 30),
                (self.heartbeat, 5),
                (self.cancel_job, 3),
                (self.cancel_workflow, 1),
                (self.signal, 12),
                (self.reap, 6),
                (self.top_up, 3),
            ]
            funcs = [p for p, _ in paths]
            weights = [w for _, w in paths]
            while not self.stop.is_set():
                path = self.rng.choices(funcs, weights)[0]
                self.attempt(conn, path)

    def attempt(self, conn: Conn, path: Callable[[Conn], None]) -> None:
        try:
            path(conn)
            conn.commit()
            self.tally.ops[path.__name__] += 1
        except EXPECTED as err:
            conn.rollback()
            self.tally.expected[type(err).__name__] += 1
        except (psycopg.Error, DatabaseError) as err:
            conn.rollback()
            self.tally.record(path.__name__, err)
        except Exception as err:
            if not conn.closed:
                conn.rollback()
            self.tally.unexpected.append(f"{path.__name__}: {type(err).__name__} {err}")

    # --- the paths ---

    def claim(self, conn: Conn) -> None:
        self.held.extend(
            claim(
                conn,
                worker=self.name,
                queues=["default"],
                job_types=[JOB_TYPE],
                limit=self.rng.randint(1, 6),
                lease_seconds=30,
            )
        )

    def finish(self, conn: Conn) -> None:
        if not self.held:
            return
        self.rng.shuffle(self.held)
        count = self.rng.randint(1, len(self.held))
        batch, self.held = self.held[:count], self.held[count:]
        finish(conn, [self.outcome(job) for job in batch])

    def outcome(self, job: ClaimedJob) -> AttemptResult:
        roll = self.rng.random()
        if roll < 0.75:
            return AttemptResult(
                job_id=job.id,
                lease_token=job.lease_token,
                status=JobStatus.SUCCEEDED,
                outcome=AttemptOutcome.SUCCEEDED,
                output={"by": self.name, "n": self.rng.randint(0, 9)},
            )
        status = JobStatus.QUEUED if roll < 0.9 else JobStatus.FAILED
        if job.attempt >= job.max_attempts:
            status = JobStatus.FAILED
        return AttemptResult(
            job_id=job.id,
            lease_token=job.lease_token,
            status=status,
            outcome=AttemptOutcome.FAILED,
            error_type="HammerError",
            error_message="chosen at random",
        )

    def heartbeat(self, conn: Conn) -> None:
        leases = [(j.id, j.lease_token, None) for j in self.held]
        still = renew_leases(conn, leases, lease_seconds=30)
        self.held = [j for j in self.held if j.id in still]

    def cancel_job(self, conn: Conn) -> None:
        row = conn.execute(
            "select id from runledger.jobs where status in ('queued', 'running') "
            "and workflow_run_id = any(%s) order by random() limit 1",
            (self.runs.sample(self.rng, 8),),
        ).fetchone()
        conn.commit()
        if row is not None:
            runledger.cancel_job(conn, row[0], reason=f"{self.name} cancel_job")

    def cancel_workflow(self, conn: Conn) -> None:
        for run_id in self.runs.sample(self.rng, 1):
            runledger.cancel_workflow(conn, run_id, reason=f"{self.name} cancel_workflow")

    def signal(self, conn: Conn) -> None:
        row = conn.execute(
            "select workflow_run_id, step_key, status from runledger.workflow_step_runs "
            "where kind = 'external' and workflow_run_id = any(%s) "
            "order by status = 'waiting' desc, random() limit 1",
            (self.runs.sample(self.rng, 8),),
        ).fetchone()
        conn.commit()
        if row is None:
            return
        run_id, key, _ = row
        if self.rng.random() < 0.85:
            # A fixed output, so that a repeat by another thread is a no-op, not a conflict.
            runledger.complete_external_step(conn, run_id, key, output={"ok": key})
        else:
            runledger.fail_external_step(conn, run_id, key, reason="rejected")

    def reap(self, conn: Conn) -> None:
        self.expire_some()
        expired = lock_expired(conn, limit=self.rng.randint(1, 10))
        finish(conn, [reap_result(e) for e in expired])

    def expire_some(self) -> None:
        """Put the leases of a few running jobs in the past, as if their workers died.

        One row per autocommit statement: a statement that locks a single row holds nothing
        while it waits, so this test-only write can take no part in a deadlock.
        """
        with psycopg.connect(self.dsn, autocommit=True) as side:
            ids = side.execute(
                "select id from runledger.jobs where status = 'running' order by random() limit %s",
                (self.rng.randint(1, 3),),
            ).fetchall()
            for (job_id,) in ids:
                # status is checked again on the row itself: it may have finished meanwhile.
                side.execute(
                    "update runledger.jobs set lease_expires_at = now() - interval '1 second' "
                    "where id = %s and status = 'running'",
                    (job_id,),
                )

    def top_up(self, conn: Conn) -> None:
        self.runs.top_up(conn, self.rng)


def reap_result(expired: Expired) -> AttemptResult:
    """What the reaper writes for an expired lease: retry while attempts remain."""
    retry = expired.attempt < expired.max_attempts
    return AttemptResult(
        job_id=expired.id,
        lease_token=expired.lease_token,
        status=JobStatus.QUEUED if retry else JobStatus.FAILED,
        outcome=expired.outcome,
        error_type="LeaseExpired",
        error_message="reaped by the hammer",
    )


class RunPool:
    """The runs the hammer works on: about ``LIVE_RUNS`` unfinished at any time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: list[uuid.UUID] = []
        self.all: list[uuid.UUID] = []
        self._made = 0

    def sample(self, rng: random.Random, k: int) -> list[uuid.UUID]:
        with self._lock:
            return rng.sample(self._live, min(k, len(self._live)))

    def top_up(self, conn: Conn, rng: random.Random) -> None:
        """Forget finished runs and enqueue new ones up to ``LIVE_RUNS``."""
        with self._lock:
            live = list(self._live)
        rows = conn.execute(
            "select id from runledger.workflow_runs where id = any(%s) "
            "and status in ('running', 'waiting')",
            (live,),
        ).fetchall()
        still = {r[0] for r in rows}
        new: list[uuid.UUID] = []
        for _ in range(LIVE_RUNS - len(still)):
            with self._lock:
                self._made += 1
                n = self._made
            new.append(runledger.enqueue_workflow(conn, rng.choice(SHAPES)(n).build()))
        conn.commit()
        with self._lock:
            self._live = [r for r in self._live if r in still] + new
            self.all.extend(new)


@attrs.frozen
class Report:
    dsn: str
    tally: Tally
    runs: tuple[uuid.UUID, ...]
    drive_rounds: int
    seconds: float


def drive_to_completion(conn: Conn, deadline: float, tally: Tally) -> int:
    """Finish everything left, single-threaded: every running job fails over as the reaper
    would, every queued job runs and succeeds, every waiting external step is completed.
    One write per transaction, so that a refused write (recorded in ``tally``) does not hold
    the others back. Stops when a round moves nothing; returns the rounds."""
    conn.execute("set synchronous_commit = off")  # only speeds up the many small commits
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        writes: list[tuple[str, Callable[[], object]]] = []
        for job_id, token, attempt, max_attempts in conn.execute(
            "select id, lease_token, attempt, max_attempts from runledger.jobs "
            "where status = 'running'"
        ).fetchall():
            lease = Expired(
                id=job_id,
                lease_token=token,
                job_type=JOB_TYPE,
                attempt=attempt,
                max_attempts=max_attempts,
                outcome=AttemptOutcome.LEASE_EXPIRED,
            )
            writes.append(("reap", functools.partial(finish, conn, [reap_result(lease)])))
        conn.execute("update runledger.jobs set run_at = now() where status = 'queued'")
        conn.commit()
        for j in claim(
            conn,
            worker="driver",
            queues=["default"],
            job_types=[JOB_TYPE],
            limit=100_000,
            lease_seconds=30,
        ):
            done = AttemptResult(
                job_id=j.id,
                lease_token=j.lease_token,
                status=JobStatus.SUCCEEDED,
                outcome=AttemptOutcome.SUCCEEDED,
                output={"by": "driver"},
            )
            writes.append(("finish", functools.partial(finish, conn, [done])))
        conn.commit()
        for run_id, key in conn.execute(
            "select workflow_run_id, step_key from runledger.workflow_step_runs "
            "where status = 'waiting'"
        ).fetchall():
            signal = functools.partial(
                runledger.complete_external_step, conn, run_id, key, output={"ok": key}
            )
            writes.append(("signal", signal))
        conn.commit()
        moved = 0
        for what, write in writes:
            try:
                write()
                conn.commit()
                moved += 1
            except (psycopg.Error, DatabaseError) as err:
                conn.rollback()
                tally.record(f"drive {what}", err)
        if not moved:
            return rounds
    return rounds


@pytest.fixture(scope="module")
def hammered(databases: TemplateDatabases) -> Iterator[Report]:
    with databases.database() as dsn:
        runs = RunPool()
        with psycopg.connect(dsn) as conn:
            runs.top_up(conn, random.Random(SEED))
        stop = threading.Event()
        hammers = [Hammer(dsn, n, stop, runs) for n in range(THREADS)]
        tally = Tally()
        errors: list[BaseException] = []

        def body(h: Hammer) -> None:
            try:
                h.run()
            except BaseException as err:  # the connection itself failed
                errors.append(err)
            finally:
                tally.merge(h.tally)

        threads = [threading.Thread(target=body, args=(h,), name=h.name) for h in hammers]
        started = time.monotonic()
        for t in threads:
            t.start()
        stop.wait(SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a hammer thread hung"
        assert errors == []
        with psycopg.connect(dsn) as conn:
            rounds = drive_to_completion(conn, time.monotonic() + 60, tally)
        yield Report(
            dsn=dsn,
            tally=tally,
            runs=tuple(runs.all),
            drive_rounds=rounds,
            seconds=time.monotonic() - started,
        )


# --- coherence over all runs, in SQL ---------------------------------------------------------

STEP_JOBS = """
select s.workflow_run_id, s.step_key, s.kind, s.status, s.job_id,
       array_agg(j.id) filter (where j.id is not null) as jobs,
       array_agg(j.status) filter (where j.id is not null) as job_statuses
from runledger.workflow_step_runs as s
left join runledger.jobs as j on j.step_id = s.id
group by s.id
having count(j.id) > 1
    or s.job_id is distinct from min(j.id::text)::uuid
    or (s.kind = 'external' and count(j.id) > 0)
    or (s.status = 'blocked' and count(j.id) > 0)
    or (s.kind = 'job' and s.status in ('queued', 'running', 'succeeded', 'failed')
        and min(j.status) is distinct from s.status)
    or (s.status = 'cancelled' and coalesce(min(j.status), 'cancelled') <> 'cancelled')
"""

RELEASES = """
with prerequisites as (
    select d.step_id,
           count(*) filter (where p.status not in ('succeeded', 'failed', 'cancelled'))
               as unfinished,
           count(*) filter (where d.release_mode = 'on_success'
                            and p.status in ('failed', 'cancelled')) as doomed
    from runledger.workflow_step_deps as d
    join runledger.workflow_step_runs as p on p.id = d.prerequisite_id
    group by d.step_id
)
select s.workflow_run_id, s.step_key, s.status, s.deps_pending, p.unfinished, p.doomed
from runledger.workflow_step_runs as s
join prerequisites as p on p.step_id = s.id
where (s.status = 'blocked' and (p.unfinished = 0 or p.doomed > 0
                                 or s.deps_pending <> p.unfinished))
   or (s.status not in ('blocked', 'cancelled') and (p.unfinished > 0 or p.doomed > 0))
"""

LIVE_JOBS_OF_FINISHED_RUNS = """
select r.id, r.status, j.step_key, j.status
from runledger.workflow_runs as r
join runledger.jobs as j on j.workflow_run_id = r.id
where r.status not in ('running', 'waiting') and j.status in ('queued', 'running')
"""


def no_violations(dsn: str, query: str) -> None:
    """Assert that the query finds no row; show every row it finds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(query).fetchall()
    assert not rows, f"{len(rows)} violations:\n" + "\n".join(map(repr, rows))


# --- the tests -----------------------------------------------------------------------------


def test_hammer_did_real_work(hammered: Report) -> None:
    ops = hammered.tally.ops
    print(
        f"\nhammer: {hammered.seconds:.1f} s, {len(hammered.runs)} runs, ops {dict(ops)}, "
        f"expected errors {dict(hammered.tally.expected)}, deadlocks "
        f"{hammered.tally.deadlocks}, unexpected {len(hammered.tally.unexpected)}, "
        f"drive rounds {hammered.drive_rounds}"
    )
    assert len(hammered.runs) > LIVE_RUNS
    for path in ("claim", "finish", "cancel_job", "cancel_workflow", "signal", "reap"):
        assert ops[path] >= 5, f"{path} ran {ops[path]} times"


def test_hammer_counts_zero_deadlocks(hammered: Report) -> None:
    tally = hammered.tally
    assert tally.deadlocks == 0, "\n\n".join(tally.deadlock_details)


def test_hammer_raises_only_expected_errors(hammered: Report) -> None:
    unexpected = hammered.tally.unexpected
    assert not unexpected, f"{len(unexpected)} unexpected errors:\n" + "\n".join(unexpected[:20])


def test_hammer_leaves_no_step_with_two_jobs_and_no_live_job_in_a_finished_run(
    hammered: Report,
) -> None:
    no_violations(hammered.dsn, STEP_JOBS)
    no_violations(hammered.dsn, LIVE_JOBS_OF_FINISHED_RUNS)


def test_hammer_releases_steps_only_by_the_rules(hammered: Report) -> None:
    no_violations(hammered.dsn, RELEASES)


def test_hammer_leaves_every_run_final_with_coherent_counters(hammered: Report) -> None:
    violations = hammered.tally.counter_violations
    assert not violations, f"{len(violations)} run counter CHECK violations:\n" + "\n".join(
        violations[:10]
    )
    no_violations(hammered.dsn, RUN_COUNTERS)
    no_violations(
        hammered.dsn,
        "select id, name, status, steps_open from runledger.workflow_runs "
        "where status in ('running', 'waiting')",
    )
