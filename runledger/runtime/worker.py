"""The worker pool: the claimer, the executor and the completer of one runtime, sharing one
in-flight table, as a single service.

Threads (all daemon, named ``runledger-<role>-<n>``):

- ``claimer`` (``runledger.runtime.claimer``): claims up to the free capacity in one
  statement and commits before any handler runs. The capacity is ``concurrency + prefetch``:
  up to ``prefetch`` claimed jobs wait in memory for a thread, so short jobs are claimed in
  batches rather than one slot at a time. Their leases are renewed like the others'; at
  shutdown they are handed back without counting the attempt.
- ``worker-<n>`` (``runledger.runtime.executor``): run handlers. A handler that used
  ``ctx.conn`` has its outcome written in that connection's transaction by its own thread;
  the others hand outcomes to the completer.
- ``completer`` (``runledger.runtime.completer``): writes queued outcomes in batches.

The claimer and the completer each hold a connection of the store's pool, handed back when
their loops end. Every committed transition goes to one ``EventStream`` (hooks read it).
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from runledger.errors import DatabaseError, TimedOut
from runledger.postgres.attempts import AttemptResult, ClaimedJob, renew_leases
from runledger.postgres.store import Store
from runledger.runtime import outcome
from runledger.runtime.claimer import Claimer
from runledger.runtime.completer import Completer
from runledger.runtime.context import JobContext
from runledger.runtime.events import EventStream, report_events
from runledger.runtime.executor import Executor, local_timeouts
from runledger.runtime.inflight import InFlight, InFlightTable
from runledger.runtime.loop import Loop
from runledger.runtime.registry import Registry

__all__ = ["InFlight", "TimedOut", "WorkerPool", "local_timeouts", "report_events"]

_logger = logging.getLogger("runledger.worker")

# What a database outage looks like from here: psycopg's errors, and the store's wrappers of
# them (a dead pooled connection surfaces as ConnectionNotUsable).
DB_ERRORS = (psycopg.Error, OSError, DatabaseError)


class WorkerPool:
    """Claims and runs jobs of ``queues`` with up to ``concurrency`` handlers at once.

    A service: ``start()``, ``drain(timeout)`` then ``stop(timeout)``. Thread-safe.
    ``events`` receives every transition it commits (default: the registry's hooks).
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
        events: EventStream | None = None,
    ) -> None:
        self._store = store
        self._concurrency = concurrency
        self._queues = tuple(queues)
        self._lease_seconds = lease_seconds
        self.events = events if events is not None else EventStream([registry.hooks])
        capacity = concurrency + (concurrency if prefetch is None else max(prefetch, 0))
        self.table = InFlightTable()
        runnable: queue.SimpleQueue[InFlight | None] = queue.SimpleQueue()
        self._runnable = runnable
        defaults = {
            job_type: {
                "max_attempts": handler.defaults.max_attempts,
                "timeout_seconds": handler.defaults.timeout_seconds,
            }
            for job_type in registry.job_types()
            if (handler := registry.get(job_type)) is not None
        }
        self._claimer = Claimer(
            store, self.table, runnable, self._flight,
            worker_id=worker_id, queues=queues, defaults=defaults, capacity=capacity,
            lease_seconds=lease_seconds, poll_interval=poll_interval,
            session_settings=session_settings,
        )  # fmt: skip
        self.wake = self._claimer.wake
        self._completer = Completer(store, registry, self.table, self.events, wake=self.wake.set)
        self._executor = Executor(
            registry, self.table, runnable, self._completer, events=self.events,
            pool=store.pool, concurrency=concurrency, capacity=capacity, slot_freed=self.wake.set,
            handler_context=handler_context,
        )  # fmt: skip
        self.claimer: Loop = self._claimer.loop
        self.completer: Loop = self._completer.loop
        self._started = False
        # What the shutdown did, for its log line: handlers that finished during ``drain``,
        # prefetched attempts ``stop`` handed back, running ones ``expire_running`` gave up.
        self.drained = 0
        self.released = 0
        self.abandoned = 0

    # --- service ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads, the completer and the claimer (idempotent)."""
        if self._started:
            return
        self._started = True
        self._executor.start()
        self.completer.start()
        self.claimer.start()

    def loops(self) -> tuple[Loop, ...]:
        """The supervised loops."""
        return (self.claimer, self.completer)

    def stop_claiming(self) -> None:
        """Claim nothing more (the first step of a graceful shutdown)."""
        self._claimer.stop_claiming()

    def drain(self, timeout: float) -> list[InFlight]:
        """Start no more handlers and wait up to ``timeout`` for the running ones; return
        those still running after it. Prefetched jobs stay unstarted (``stop`` releases them).
        """
        self.stop_claiming()
        deadline = time.monotonic() + timeout
        self.claimer.stop(timeout)
        self._executor.stop_starting()
        with self.table.changed:
            running = len(self.table.running())
            self.table.changed.wait_for(
                lambda: not self.table.running(), timeout=max(deadline - time.monotonic(), 0)
            )
            still = self.table.running()
            self.drained += max(running - len(still), 0)
            return still

    def stop(self, timeout: float = 5.0) -> None:
        """Release what never started, flush outcomes and stop every thread it owns."""
        self.stop_claiming()
        self._executor.stop_starting()
        never_started = [f for f in self.table.flights() if not f.started]
        self.released += len(never_started)
        for flight in never_started:
            self._completer.queue_outcome(flight, outcome.released(flight.job))
        threads = self._executor.threads
        for _ in threads:
            self._runnable.put(None)
        deadline = time.monotonic() + timeout
        with self.table.changed:
            self.table.changed.wait_for(
                lambda: not any(f.done or not f.started for f in self.table.by_token.values()),
                timeout=max(deadline - time.monotonic(), 0),
            )
        self.completer.stop(max(deadline - time.monotonic(), 0.1))
        with self.table.lock:
            stuck = len(self.table.running())
        for thread in threads:
            if thread.ident is None:
                continue  # never started
            # Threads of handlers stuck in user code cannot be joined; do not wait for them.
            thread.join(0.05 if stuck else max(deadline - time.monotonic(), 0.01))

    def expire_running(self, flights: Sequence[InFlight], timeout: float | None = None) -> None:
        """Give up the leases of handlers still running at shutdown, so any runtime's reaper
        re-runs them at once. The heartbeat stops renewing them; a handler that returns
        before a reaper takes its job still records its outcome, one that returns after is
        fenced out. Waits up to ``timeout`` for a connection (default: the pool's)."""
        if not flights:
            return
        self.abandoned += len(flights)
        for flight in flights:
            self.table.mark_lost(flight.job.lease_token)
        try:
            with self._store.transaction(timeout) as conn:
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
        return self.table.leases()

    def unwritten_progress(self) -> dict[uuid.UUID, tuple[int, str]]:
        """(report count, JSON text) of each held attempt's latest progress not yet written,
        by lease token (see ``InFlightTable.unwritten_progress``)."""
        return self.table.unwritten_progress()

    def progress_written(self, written: dict[uuid.UUID, int]) -> None:
        """Note that these progress reports (counts by lease token) are written."""
        self.table.progress_written(written)

    def flights(self) -> list[InFlight]:
        """Every attempt this pool holds."""
        return self.table.flights()

    def of_job(self, job_id: uuid.UUID) -> list[InFlight]:
        """The attempts of ``job_id`` this pool holds (usually one)."""
        return self.table.of_job(job_id)

    def mark_lost(self, lease_token: uuid.UUID, *, unless_writing: bool = False) -> InFlight | None:
        """Note that this attempt's lease is gone and tell its handler (``ctx.cancelled``);
        see ``InFlightTable.mark_lost``."""
        return self.table.mark_lost(lease_token, unless_writing=unless_writing)

    def backlog(self) -> bool:
        """Whether the last claim filled every free slot with jobs of which one had waited
        more than a second (``claimer.BACKLOG_WAIT``) past its due time: due jobs wait for
        this runtime's slots (a saturated queue). Lock-free; a hint, not a count."""
        return self._claimer.backlog

    def wants_queue(self, queue_name: str) -> bool:
        """True if this pool claims from ``queue_name``."""
        return queue_name in self._queues

    # --- attempts ---------------------------------------------------------------------------

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
            report_progress=lambda text: self.table.report_progress(job.lease_token, text),
        )
        return InFlight(job=job, ctx=ctx, marked=job.started)

    def _adopt(self, job: ClaimedJob) -> InFlight:
        """Hold a claimed attempt as the claimer does (for tests that claim by hand)."""
        flight = self._flight(job)
        self.table.adopt(flight)
        return flight

    def _queue_outcome(self, flight: InFlight, result: AttemptResult) -> None:
        """Hand an outcome to the completer (for tests that finish by hand)."""
        self._completer.queue_outcome(flight, result)

    def _renew_one(self, job: ClaimedJob) -> bool:
        with self._store.transaction() as conn:
            flight = self.table.by_token.get(job.lease_token)
            remaining: float | None = None
            if flight is not None and flight.deadline is not None:
                remaining = flight.deadline - time.monotonic()
            progress = self.table.unwritten_progress([job.lease_token])
            held = renew_leases(
                conn,
                [(job.id, job.lease_token, remaining)],
                lease_seconds=self._lease_seconds,
                progress={token: text for token, (_, text) in progress.items()},
            )
        if job.id in held:
            self.table.progress_written({token: seq for token, (seq, _) in progress.items()})
        return job.id in held
