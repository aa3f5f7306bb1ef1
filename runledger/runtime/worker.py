"""The worker pool: claims jobs, runs handlers on worker threads, writes their outcomes.

Threads (all daemon, named ``runledger-<role>-<n>``):

- ``claimer``: claims up to the free capacity in one statement and commits before any handler
  runs (on a connection it holds in autocommit mode: the claim is one round trip); sleeps
  until woken (a NOTIFY, half the capacity freed) or ``poll_interval`` passes.
  The capacity is ``concurrency + prefetch``: up to ``prefetch`` claimed jobs wait in memory
  for a worker thread, so short jobs are claimed in batches rather than one slot at a time.
  Their leases are renewed like the others'; at shutdown they are handed back without
  counting the attempt.
- ``worker-<n>``: run handlers. A handler that used ``ctx.conn`` has its outcome written in
  that connection's transaction by its own thread; the others hand outcomes to the completer.
- ``completer``: writes queued outcomes in batches, one transaction per batch, retrying a
  batch while the database is away (the lease fence makes a repeated write harmless). It holds
  a connection too: a batch without workflow steps is one statement committed by itself, a
  batch with them one transaction with the workflows' advance.

The two held connections come from the store's pool and go back when their loops end.

No transaction or row lock is held while a handler runs, except the handler's own ``ctx.conn``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import attrs
import psycopg

from runledger.core.payload import check_json
from runledger.core.retry import DEFAULT_RETRY_POLICY, RetryPolicy
from runledger.core.status import AttemptOutcome, EventKind, JobStatus
from runledger.errors import ConnectionNotUsable, DatabaseError, PayloadNotSerializable
from runledger.postgres.attempts import (
    GENERIC_PLAN_SESSION,
    AttemptResult,
    ClaimedJob,
    FinishReport,
    claim,
    finish,
    mark_started,
    orphaned_attempts,
    renew_leases,
)
from runledger.postgres.held import HeldConnection
from runledger.postgres.liveness import connection_broke
from runledger.postgres.store import Store
from runledger.runtime import outcome
from runledger.runtime.context import JobContext
from runledger.runtime.hooks import LifecycleEvent
from runledger.runtime.loop import IMMEDIATE_RETRIES, Loop
from runledger.runtime.registry import Registry

_logger = logging.getLogger("runledger.worker")

COMPLETION_BATCH = 500
# The claimer pauses while this many times the capacity of outcomes wait to be written.
UNWRITTEN_LIMIT_FACTOR = 3

# What a database outage looks like from here: psycopg's errors, and the store's wrappers of
# them (a dead pooled connection surfaces as ConnectionNotUsable).
DB_ERRORS = (psycopg.Error, OSError, DatabaseError)


class TimedOut(Exception):
    """The attempt outlived its ``timeout_seconds``."""


class ClaimInterrupted(Exception):
    """A claim committed, but its connection broke before the worker read which jobs it got."""


class OutcomeNotWritable(Exception):
    """The database refused to store the attempt's outcome (its output, say)."""


def _refused(err: BaseException) -> bool:
    """True if a write failed for what it wrote, not for the connection or the database
    being away: writing it again would fail again."""
    if connection_broke(err):
        return False
    return not isinstance(err, (psycopg.OperationalError, OSError, ConnectionNotUsable))


@attrs.define(eq=False)
class InFlight:
    """A claimed attempt in this process: its context and where it stands.

    Keyed by lease token, not job id: a retry of a job may be claimed here while an earlier
    attempt's handler is still running (it ignored its timeout), and each keeps its own state.
    ``deadline`` is set when the handler starts, not at claim (the job may wait in prefetch).
    ``writing`` is set once the outcome is handed over to be written (to the completer, or
    to the handler's own transaction): that write finds out itself whether the lease held.
    ``marked`` is true once the ledger says the handler started (``handler_started_at``):
    set by the claim for a job an idle thread runs at once, else written by the completer.
    """

    job: ClaimedJob
    ctx: JobContext
    deadline: float | None = None
    started: bool = False
    done: bool = False
    lost: bool = False
    timed_out: bool = False
    writing: bool = False
    marked: bool = False


def report_events(
    report: FinishReport, results: dict[uuid.UUID, AttemptResult]
) -> list[LifecycleEvent]:
    """The hook events of a written ``finish`` (``results`` by lease token): jobs, then steps,
    then runs."""
    events: list[LifecycleEvent] = []
    for done in report.finished:
        result = results.get(done.lease_token)
        if result is not None and result.outcome is AttemptOutcome.RELEASED:
            continue
        kind = {
            JobStatus.SUCCEEDED: EventKind.JOB_SUCCEEDED,
            JobStatus.QUEUED: EventKind.JOB_RETRYING,
            JobStatus.FAILED: EventKind.JOB_FAILED,
        }.get(done.status)
        if kind is None:
            continue
        error = None
        if result is not None and result.error_type is not None:
            error = f"{result.error_type}: {result.error_message}"
        events.append(
            LifecycleEvent(
                kind=kind, job_id=done.job_id, job_type=done.job_type, attempt=done.attempt,
                workflow_run_id=done.workflow_run_id, step_key=done.step_key, error=error,
                retry_at=done.run_at if done.status is JobStatus.QUEUED else None,
                output=result.output if result is not None else None,
            )
        )  # fmt: skip
    events.extend(workflow_events(report))
    return events


def workflow_events(report: FinishReport) -> list[LifecycleEvent]:
    """The hook events of step and run transitions in a ``finish``."""
    events = [
        LifecycleEvent(
            kind=EventKind(f"step.{change.status}"),
            workflow_run_id=change.run_id,
            step_key=change.step_key,
            job_id=change.job_id,
        )
        for change in report.workflow.steps
    ]
    events.extend(
        LifecycleEvent(
            kind=EventKind("run.resumed" if change.status == "running" else f"run.{change.status}"),
            workflow_run_id=change.run_id,
        )
        for change in report.workflow.runs
    )
    return events


class WorkerPool:
    """Claims and runs jobs of ``queues`` with up to ``concurrency`` handlers at once.

    A service: ``start()``, ``drain(deadline)`` then ``stop()``. Thread-safe.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        worker_id: str,
        concurrency: int,
        queues: Sequence[str],
        lease_seconds: float,
        poll_interval: float,
        prefetch: int | None = None,
        handler_context: Callable[[], AbstractContextManager[Any]] | None = None,
        session_settings: bool = True,
    ) -> None:
        self._store = store
        # Session settings would outlive the transaction on PgBouncer in transaction mode
        # (see runledger.postgres.held); without them the claim sets its plan mode locally.
        self._claim_conn = HeldConnection(
            store.pool, settings=GENERIC_PLAN_SESSION if session_settings else None
        )
        self._finish_conn = HeldConnection(store.pool)
        self._handler_context = handler_context or contextlib.nullcontext
        self._registry = registry
        self._worker_id = worker_id
        self._concurrency = concurrency
        self._capacity = concurrency + (concurrency if prefetch is None else max(prefetch, 0))
        self._queues = tuple(queues)
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._inflight: dict[uuid.UUID, InFlight] = {}
        self._busy = 0
        self._claiming = True
        self._starting = True
        self._changed = threading.Condition(self._lock)
        self.wake = threading.Event()
        self._runnable: queue.SimpleQueue[InFlight | None] = queue.SimpleQueue()
        # Outcomes to write, and (with None) handlers that started and need marking.
        self._completions: queue.SimpleQueue[tuple[InFlight, AttemptResult | None]] = (
            queue.SimpleQueue()
        )
        self._pending: list[tuple[InFlight, AttemptResult]] = []
        self._to_mark: list[InFlight] = []
        self._idle = 0  # worker threads waiting for a job
        # A claim failed: the server may have committed it, leasing jobs this pool never
        # learnt of; the next claim step hands them back first.
        self._claim_unsure = False
        # Attempts forgotten without an outcome, their leases left to expire: not orphans.
        self._abandoned: set[uuid.UUID] = set()
        self._unwritten = 0  # outcomes handed to the completer and not yet written
        self._write_failures = 0  # the completer's failed writes in a row
        self._defaults = {
            job_type: {
                "max_attempts": handler.defaults.max_attempts,
                "timeout_seconds": handler.defaults.timeout_seconds,
            }
            for job_type in registry.job_types()
            if (handler := registry.get(job_type)) is not None
        }
        self.claimer = Loop("runledger-claimer-0", self._claim_step, on_exit=self._claim_conn.close)
        self.completer = Loop(
            "runledger-completer-0", self._complete_step, on_exit=self._finish_conn.close
        )
        self._workers = [
            threading.Thread(target=self._work, name=f"runledger-worker-{n}", daemon=True)
            for n in range(concurrency)
        ]
        self._started = False

    # --- service ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the claimer, the completer and the worker threads (idempotent)."""
        if self._started:
            return
        self._started = True
        for thread in self._workers:
            thread.start()
        self.completer.start()
        self.claimer.start()

    def loops(self) -> tuple[Loop, ...]:
        """The supervised loops."""
        return (self.claimer, self.completer)

    def stop_claiming(self) -> None:
        """Claim nothing more (the first step of a graceful shutdown)."""
        with self._lock:
            self._claiming = False
        self.claimer.signal_stop()
        self.wake.set()

    def drain(self, timeout: float) -> list[InFlight]:
        """Start no more handlers and wait up to ``timeout`` for the running ones; return
        those still running after it. Prefetched jobs stay unstarted (``stop`` releases them).
        """
        self.stop_claiming()
        deadline = time.monotonic() + timeout
        self.claimer.stop(timeout)
        with self._changed:
            self._starting = False
            self._changed.wait_for(
                lambda: not self._running(), timeout=max(deadline - time.monotonic(), 0)
            )
            return self._running()

    def _running(self) -> list[InFlight]:
        return [f for f in self._inflight.values() if f.started and not f.done]

    def stop(self, timeout: float = 5.0) -> None:
        """Release what never started, flush outcomes and stop every thread it owns."""
        self.stop_claiming()
        with self._lock:
            self._starting = False
            never_started = [f for f in self._inflight.values() if not f.started]
        for flight in never_started:
            self._queue_outcome(flight, outcome.released(flight.job))
        for _ in self._workers:
            self._runnable.put(None)
        deadline = time.monotonic() + timeout
        with self._changed:
            self._changed.wait_for(
                lambda: not any(f.done or not f.started for f in self._inflight.values()),
                timeout=max(deadline - time.monotonic(), 0),
            )
        self.completer.stop(max(deadline - time.monotonic(), 0.1))
        with self._lock:
            stuck = len(self._running())
        for thread in self._workers:
            if thread.ident is None:
                continue  # never started
            # Threads of handlers stuck in user code cannot be joined; do not wait for them.
            thread.join(0.05 if stuck else max(deadline - time.monotonic(), 0.01))

    def expire_running(self, flights: Sequence[InFlight]) -> None:
        """Give up the leases of handlers still running at shutdown, so any runtime's reaper
        re-runs them at once. The heartbeat stops renewing them; a handler that returns
        before a reaper takes its job still records its outcome, one that returns after is
        fenced out."""
        if not flights:
            return
        for flight in flights:
            self.mark_lost(flight.job.lease_token)
        try:
            with self._store.transaction() as conn:
                renew_leases(
                    conn,
                    [(f.job.id, f.job.lease_token, None) for f in flights],
                    lease_seconds=0,
                )
        except DB_ERRORS:
            _logger.exception("could not expire the leases of %d running jobs", len(flights))

    # --- state ------------------------------------------------------------------------------

    def leases(self) -> list[tuple[uuid.UUID, uuid.UUID, float | None]]:
        """(job id, lease token, seconds left before the timeout) of every attempt this pool
        holds; an attempt waiting for a thread has its whole timeout left."""
        now = time.monotonic()
        with self._lock:
            flights = [f for f in self._inflight.values() if not f.lost]
        leases: list[tuple[uuid.UUID, uuid.UUID, float | None]] = []
        for f in flights:
            remaining: float | None = None
            if f.job.timeout_seconds is not None:
                deadline = f.deadline
                remaining = float(f.job.timeout_seconds) if deadline is None else deadline - now
            leases.append((f.job.id, f.job.lease_token, remaining))
        return leases

    def flights(self) -> list[InFlight]:
        """Every attempt this pool holds."""
        with self._lock:
            return list(self._inflight.values())

    def of_job(self, job_id: uuid.UUID) -> list[InFlight]:
        """The attempts of ``job_id`` this pool holds (usually one)."""
        with self._lock:
            return [f for f in self._inflight.values() if f.job.id == job_id]

    def mark_lost(self, lease_token: uuid.UUID, *, unless_writing: bool = False) -> InFlight | None:
        """Note that this attempt's lease is gone and tell its handler (``ctx.cancelled``).
        Returns the attempt if it was held and not already known lost. With
        ``unless_writing``, an attempt whose outcome is being written is left alone."""
        with self._lock:
            flight = self._inflight.get(lease_token)
            if flight is None or flight.lost or (unless_writing and flight.writing):
                return None
            flight.lost = True
        flight.ctx.cancelled.set()
        return flight

    def wants_queue(self, queue_name: str) -> bool:
        """True if this pool claims from ``queue_name``."""
        return queue_name in self._queues

    # --- claimer ----------------------------------------------------------------------------

    def _claim_step(self, stop: threading.Event) -> None:
        # Cleared before the capacity is read: a slot freed (or a NOTIFY) after this sets it
        # again, one before it shows in ``free``. Clearing only when claiming left a wake
        # that came while the capacity was full set, and the loop spun on it.
        self.wake.clear()
        with self._lock:
            free = self._capacity - self._busy if self._claiming else 0
            # Threads that would take a claimed job at once: those jobs are marked started
            # by the claim itself; the rest wait in prefetch, unmarked until they start.
            start_now = max(self._idle - self._runnable.qsize(), 0)
            # Claim no further ahead than the completer can write: finished jobs whose
            # outcomes wait in memory still hold leases and make every write slower.
            if self._unwritten >= UNWRITTEN_LIMIT_FACTOR * self._capacity:
                free = 0
        claimed: list[ClaimedJob] = []
        if self._claim_unsure:
            self._release_orphans()
        if free > 0 and self._defaults:
            session_plan = bool(self._claim_conn.settings)
            with self._claim_conn.autocommit() as conn:
                # One statement that commits by itself, unless the plan mode must be set
                # for this transaction only.
                alone = session_plan or conn.prepare_threshold is None
                self._claim_unsure = True  # until the claim's reply is read
                with contextlib.nullcontext() if alone else conn.transaction():
                    claimed = claim(
                        conn,
                        worker=self._worker_id,
                        queues=self._queues,
                        job_types=list(self._defaults),
                        limit=free,
                        lease_seconds=self._lease_seconds,
                        defaults=self._defaults,
                        session_generic_plan=session_plan,
                        start_now=start_now,
                    )
                self._claim_unsure = False
            for job in claimed:
                self._runnable.put(self._adopt(job))
        if free > 0 and len(claimed) == free:
            return  # there may be more: claim again once a slot frees up
        if not stop.is_set():
            self.wake.wait(self._poll_interval)

    def _release_orphans(self) -> None:
        """Hand back, uncounted, the jobs a failed claim may have leased to this pool: its
        running attempts the pool does not hold (their handlers never started)."""
        with self._lock:
            held = [*self._inflight, *self._abandoned]
        with self._claim_conn.transaction() as conn:
            orphans = orphaned_attempts(conn, worker=self._worker_id, held=held)
            if orphans:
                finish(
                    conn,
                    [
                        outcome.released(
                            outcome.Orphan(id=job_id, lease_token=token),
                            ClaimInterrupted(
                                "the claim committed but its connection broke before the "
                                "worker read it: released, the attempt not counted"
                            ),
                        )
                        for job_id, token in orphans
                    ],
                )
        self._claim_unsure = False
        if orphans:
            _logger.warning(
                "released %d jobs of a claim whose reply was lost with its connection",
                len(orphans),
            )

    def _adopt(self, job: ClaimedJob) -> InFlight:
        """Hold a claimed attempt: its lease is renewed from now on."""
        flight = self._flight(job)
        flight.marked = job.started
        with self._lock:
            self._inflight[job.lease_token] = flight
            self._busy += 1
        return flight

    def _flight(self, job: ClaimedJob) -> InFlight:
        ctx = JobContext(
            job_id=job.id,
            job_type=job.job_type,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            queue=job.queue,
            priority=job.priority,
            workflow_run_id=job.workflow_run_id,
            step_key=job.step_key,
            workflow_input=job.workflow_input,
            upstream=job.upstream,
            scheduled_at=job.scheduled_at,
            pool=self._store.pool,
            heartbeat=lambda: self._renew_one(job),
        )
        return InFlight(job=job, ctx=ctx)

    def _renew_one(self, job: ClaimedJob) -> bool:
        with self._store.transaction() as conn:
            flight = self._inflight.get(job.lease_token)
            remaining: float | None = None
            if flight is not None and flight.deadline is not None:
                remaining = flight.deadline - time.monotonic()
            held = renew_leases(
                conn, [(job.id, job.lease_token, remaining)], lease_seconds=self._lease_seconds
            )
        return job.id in held

    # --- workers ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                flight = self._runnable.get()
            finally:
                with self._lock:
                    self._idle -= 1
            if flight is None:
                return
            with self._lock:
                # Not after shutdown began, nor for an attempt already reaped or cancelled.
                start = self._starting and not flight.lost
                flight.started = start
                if start and flight.job.timeout_seconds is not None:
                    flight.deadline = time.monotonic() + flight.job.timeout_seconds
            try:
                if start:
                    if not flight.marked:
                        self._completions.put((flight, None))  # the completer marks it
                    self._registry.hooks.emit([_started(flight.job)])
                    self._run(flight)
                elif flight.lost:
                    self._forget(flight)
            except BaseException:
                _logger.exception("runledger worker error around job %s", flight.job.id)
            finally:
                if start:
                    self._resolve(flight)
                with self._changed:
                    flight.done = start
                    self._busy -= 1
                    self._changed.notify_all()
                    # Claim again once half the capacity is free, or when idle.
                    hungry = self._busy <= self._capacity // 2
                if hungry:
                    self.wake.set()

    def _run(self, flight: InFlight) -> None:
        job, ctx = flight.job, flight.ctx
        handler = self._registry.get(job.job_type)
        policy = handler.retry if handler is not None else DEFAULT_RETRY_POLICY
        result: AttemptResult
        if handler is None:  # the claim only takes registered types; kept for safety
            result = outcome.failure(job, LookupError(f"no handler for {job.job_type}"), policy)
        else:
            try:
                with self._handler_context():
                    output = handler.fn(ctx, job.payload)
                check_json(output, root="$output")
                result = outcome.success(job, output)
            except PayloadNotSerializable as err:
                result = outcome.failure(
                    job,
                    TypeError(f"the handler returned a value that is not JSON: {err}"),
                    policy,
                )
            except BaseException as err:
                result = outcome.failure(job, err, policy, tb=traceback.format_exc())
        if flight.deadline is not None and time.monotonic() > flight.deadline:
            flight.timed_out = True
            result = outcome.failure(
                job,
                TimedOut(f"the attempt ran past its timeout of {job.timeout_seconds} s"),
                policy,
                outcome=AttemptOutcome.TIMED_OUT,
            )
        conn = ctx.take_conn()
        if conn is not None:
            self._finish_in_handler_conn(flight, result, conn, policy)
        else:
            self._queue_outcome(flight, result)

    def _finish_in_handler_conn(
        self,
        flight: InFlight,
        result: AttemptResult,
        conn: psycopg.Connection[Any],
        policy: RetryPolicy,
    ) -> None:
        """Write a success in the handler's own transaction, which commits only if the
        lease is still held; anything else rolls the handler's writes back.

        Whatever happens to the connection, the attempt ends resolved: its outcome written
        here, or queued for the completer (fenced on the lease, so a failure queued after a
        commit whose acknowledgement was lost is dropped), or forgotten with its lease lost.
        """
        pool = self._store.pool
        with self._lock:
            flight.writing = True
        try:
            if result.status is not JobStatus.SUCCEEDED:
                _roll_back(conn)
                self._queue_outcome(flight, result)
                return
            try:
                report = finish(conn, [result])
                if not report.lost:
                    conn.commit()
            except Exception as err:
                _roll_back(conn)
                failed = outcome.failure(
                    flight.job,
                    RuntimeError(f"the handler's transaction on ctx.conn failed: {err}"),
                    policy,
                )
                self._queue_outcome(flight, failed)
                return
            if report.lost:
                _roll_back(conn)
                _logger.warning(
                    "job %s: lease lost before its success was written; the handler's "
                    "writes on ctx.conn were rolled back",
                    flight.job.id,
                )
                self._forget(flight)
                return
            self._forget(flight)
            self._registry.hooks.emit(report_events(report, {result.lease_token: result}))
        finally:
            pool.putconn(conn)

    # --- completer --------------------------------------------------------------------------

    def _complete_step(self, stop: threading.Event) -> None:
        if not self._pending and not self._to_mark:
            try:
                self._take_completion(self._completions.get(timeout=0.2))
            except queue.Empty:
                return
        while len(self._pending) < COMPLETION_BATCH:
            try:
                self._take_completion(self._completions.get_nowait())
            except queue.Empty:
                break
        try:
            self._write_marks()
            if self._pending:
                self._write_outcomes(self._pending)
                self._pending = []
        except Exception as err:
            self._write_failures += 1
            if self._pending and _refused(err):
                _logger.error(
                    "the database refused a batch of %d outcomes (%s); writing them one by one",
                    len(self._pending),
                    str(err).strip(),
                )
                self._write_one_by_one()
                return
            # A connection that broke in use is replaced at once; a database that is away
            # is waited for.
            at_once = self._write_failures <= IMMEDIATE_RETRIES and connection_broke(err)
            _logger.warning(
                "could not write %d outcomes (%s); retrying %s",
                len(self._pending),
                str(err).strip(),
                "at once" if at_once else "in 0.5 s",
            )
            if not at_once:
                stop.wait(0.5)
            return
        self._write_failures = 0

    def _take_completion(self, item: tuple[InFlight, AttemptResult | None]) -> None:
        flight, result = item
        if result is None:
            self._to_mark.append(flight)
        else:
            self._pending.append((flight, result))

    def _write_marks(self) -> None:
        """Mark started handlers that waited in prefetch, unless their outcome is being
        written already (it supersedes the mark) or their lease is gone."""
        with self._lock:
            marks = [f for f in self._to_mark if not (f.writing or f.lost or f.marked)]
        if marks:
            try:
                with self._finish_conn.autocommit() as conn:
                    mark_started(conn, [(f.job.id, f.job.lease_token) for f in marks])
            except Exception as err:
                if not _refused(err):
                    raise  # the connection: the loop writes them again
                # A refused mark must not hold back the outcomes: these attempts would be
                # released uncounted if their worker died, as if they never started.
                _logger.error("could not mark %d attempts started (%s)", len(marks), err)
            for flight in marks:
                flight.marked = True
        self._to_mark = []

    def _write_outcomes(self, batch: Sequence[tuple[InFlight, AttemptResult]]) -> None:
        results = {result.lease_token: result for _, result in batch}
        # A workflow step's outcome commits with its workflow's advance; other outcomes are
        # one statement, which commits by itself.
        steps = any(flight.job.step_id is not None for flight, _ in batch)
        held = self._finish_conn
        with held.transaction() if steps else held.autocommit() as conn:
            report = finish(conn, list(results.values()))
        with self._lock:
            self._unwritten -= len(batch)
        self.wake.set()  # the claimer may have been held back by the backlog
        for flight, _ in batch:
            self._forget(flight)
        for job_id in report.lost:
            _logger.info("job %s: lease lost before its outcome was written; dropped", job_id)
        self._registry.hooks.emit(report_events(report, results))

    def _write_one_by_one(self) -> None:
        """Write a refused batch's outcomes alone, so that one the database cannot take
        holds back no other: it is replaced by a failure that says why, and if even that is
        refused its attempt is forgotten, its lease left to expire for the reaper."""
        while self._pending:
            flight, result = self._pending[0]
            try:
                self._write_outcomes([(flight, result)])
            except Exception as err:
                if not _refused(err):
                    raise  # the connection: the loop retries what is left
                handler = self._registry.get(flight.job.job_type)
                policy = handler.retry if handler is not None else DEFAULT_RETRY_POLICY
                replacement = outcome.failure(
                    flight.job,
                    OutcomeNotWritable(f"the database refused the attempt's outcome: {err}"),
                    policy,
                    tb="",
                )
                try:
                    self._write_outcomes([(flight, replacement)])
                except Exception as again:
                    if not _refused(again):
                        raise
                    _logger.error(
                        "job %s: no outcome of its attempt could be written (%s); leaving "
                        "its lease to expire",
                        flight.job.id,
                        again,
                    )
                    with self._lock:
                        self._unwritten -= 1
                    self._abandon(flight)
            self._pending.pop(0)

    def _queue_outcome(self, flight: InFlight, result: AttemptResult) -> None:
        with self._lock:
            flight.writing = True
            self._unwritten += 1
        self._completions.put((flight, result))

    def _resolve(self, flight: InFlight) -> None:
        """After the handler returned: an attempt whose outcome was neither written nor
        queued (an error escaped the finish) is forgotten with its lease left to expire, so
        that no heartbeat renews it and a reaper takes the job."""
        with self._lock:
            unresolved = not flight.writing and self._inflight.get(flight.job.lease_token) is flight
        if unresolved:
            _logger.error(
                "job %s: its outcome could not be written; leaving its lease to expire",
                flight.job.id,
            )
            self._abandon(flight)

    def _abandon(self, flight: InFlight) -> None:
        """Forget an attempt whose outcome will never be written; its lease expires."""
        with self._lock:
            self._abandoned.add(flight.job.lease_token)
        self.mark_lost(flight.job.lease_token)
        self._forget(flight)

    def _forget(self, flight: InFlight) -> None:
        with self._changed:
            if self._inflight.get(flight.job.lease_token) is flight:
                del self._inflight[flight.job.lease_token]
            self._changed.notify_all()


def _roll_back(conn: psycopg.Connection[Any]) -> None:
    """Roll back a handler's transaction; a connection that broke has nothing to roll back
    (the server ended the transaction with the session) and goes back to the pool, which
    discards it."""
    if conn.closed or conn.broken:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        _logger.warning("could not roll back a handler's ctx.conn; discarding it", exc_info=True)
        conn.close()


def _started(job: ClaimedJob) -> LifecycleEvent:
    return LifecycleEvent(
        kind=EventKind.JOB_STARTED,
        job_id=job.id,
        job_type=job.job_type,
        attempt=job.attempt,
        workflow_run_id=job.workflow_run_id,
        step_key=job.step_key,
    )


def local_timeouts(pool: WorkerPool, now: Callable[[], float] = time.monotonic) -> list[InFlight]:
    """Tell handlers past their deadline that they timed out (``ctx.cancelled``)."""
    late = []
    moment = now()
    for flight in pool.flights():
        overdue = flight.deadline is not None and moment > flight.deadline
        if overdue and flight.started and not flight.ctx.cancelled.is_set():
            flight.ctx.cancelled.set()
            late.append(flight)
    return late
