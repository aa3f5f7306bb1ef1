"""The executor: ``concurrency`` threads that run handlers, each attempt to a decided outcome
written in the handler's own transaction (``ctx.conn``) or handed to the completer."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import attrs
import psycopg
from psycopg_pool import ConnectionPool

from runledger.core.payload import check_json
from runledger.core.retry import DEFAULT_RETRY_POLICY, RetryPolicy
from runledger.core.status import AttemptOutcome, EventKind
from runledger.errors import PayloadNotSerializable, TimedOut
from runledger.postgres.attempts import AttemptResult, finish
from runledger.runtime import outcome
from runledger.runtime.completer import Completer
from runledger.runtime.events import EventStream, report_events, started_event
from runledger.runtime.inflight import InFlight, InFlightTable
from runledger.runtime.registry import Registry
from runledger.runtime.tracing import job_span

_logger = logging.getLogger("runledger.worker")


class Executor:
    """Runs the handlers of the attempts put in ``runnable``, one thread each of
    ``concurrency`` (named ``runledger-worker-<n>``); a ``None`` ends one thread.

    No transaction or row lock is held while a handler runs, except its own ``ctx.conn``.
    ``slot_freed`` is called when half the capacity is free (the claimer claims again).
    """

    def __init__(
        self,
        registry: Registry,
        table: InFlightTable,
        runnable: queue.SimpleQueue[InFlight | None],
        completer: Completer,
        *,
        events: EventStream,
        pool: ConnectionPool[Any],
        concurrency: int,
        capacity: int,
        slot_freed: Callable[[], None],
        handler_context: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self._registry = registry
        self._table = table
        self._runnable = runnable
        self._completer = completer
        self._events = events
        self._pool = pool
        self._capacity = capacity
        self._slot_freed = slot_freed
        self._handler_context = handler_context or contextlib.nullcontext
        self.starting = True  # guarded by the table's lock
        self.threads = [
            threading.Thread(target=self._work, name=f"runledger-worker-{n}", daemon=True)
            for n in range(concurrency)
        ]

    def start(self) -> None:
        """Start the threads."""
        for thread in self.threads:
            thread.start()

    def stop_starting(self) -> None:
        """Start no more handlers (attempts taken from now on stay unstarted)."""
        with self._table.lock:
            self.starting = False

    def _work(self) -> None:
        table = self._table
        while True:
            with table.lock:
                table.idle += 1
            try:
                flight = self._runnable.get()
            finally:
                with table.lock:
                    table.idle -= 1
            if flight is None:
                return
            with table.lock:
                # Not after shutdown began, nor for an attempt already reaped or cancelled.
                start = self.starting and not flight.lost
                flight.started = start
                if start:
                    flight.started_at = now = time.monotonic()
                    if flight.job.timeout_seconds is not None:
                        flight.deadline = now + flight.job.timeout_seconds
            try:
                if start:
                    if not flight.marked:
                        self._completer.queue_mark(flight)
                    # Nobody may want it (no hook, logs above DEBUG): then it is not built.
                    if self._events.wants(EventKind.JOB_STARTED):
                        self._events.emit([started_event(flight.job)])
                    self._run(flight)
                elif flight.lost:
                    table.forget(flight)
            except BaseException:
                _logger.exception("runledger worker error around job %s", flight.job.id)
            finally:
                if start:
                    self._resolve(flight)
                with table.changed:
                    flight.done = start
                    table.busy -= 1
                    table.changed.notify_all()
                    # Claim again once half the capacity is free, or when idle.
                    hungry = table.busy <= self._capacity // 2
                if hungry:
                    self._slot_freed()

    def _run(self, flight: InFlight) -> None:
        job, ctx = flight.job, flight.ctx
        handler = self._registry.get(job.job_type)
        policy = handler.retry if handler is not None else DEFAULT_RETRY_POLICY
        result: AttemptResult
        error: BaseException | None = None
        # The span continues the enqueuer's trace (a no-op without a stored trace context).
        with job_span(job) as span:
            if handler is None:  # the claim only takes registered types; kept for safety
                error = LookupError(f"no handler for {job.job_type}")
                result = outcome.failure(job, error, policy)
            else:
                try:
                    with self._handler_context():
                        output = handler.fn(ctx, job.payload)
                    check_json(output, root="$output")
                    result = outcome.success(job, output)
                except PayloadNotSerializable as err:
                    error = TypeError(f"the handler returned a value that is not JSON: {err}")
                    result = outcome.failure(job, error, policy)
                except BaseException as err:
                    error = err
                    result = outcome.failure(job, err, policy, tb=traceback.format_exc())
            if flight.started_at is not None:
                flight.duration = time.monotonic() - flight.started_at
            if flight.deadline is not None and time.monotonic() > flight.deadline:
                flight.timed_out = True
                error = TimedOut(f"the attempt ran past its timeout of {job.timeout_seconds} s")
                result = outcome.failure(job, error, policy, outcome=AttemptOutcome.TIMED_OUT)
            span.outcome(result, error)
        with self._table.lock:
            latest = flight.progress
        if latest is not None:
            # The last report is kept whatever the heartbeat managed to write before.
            result = attrs.evolve(result, progress=latest)
        conn = ctx.take_conn()
        if conn is not None:
            self._finish_in_handler_conn(flight, result, conn, policy)
        else:
            self._completer.queue_outcome(flight, result)

    def _finish_in_handler_conn(
        self,
        flight: InFlight,
        result: AttemptResult,
        conn: psycopg.Connection[Any],
        policy: RetryPolicy,
    ) -> None:
        """Write a success or a snooze in the handler's own transaction, which commits only if
        the lease is still held; anything else rolls the handler's writes back.

        Whatever happens to the connection, the attempt ends resolved: its outcome written
        here, or queued for the completer (fenced on the lease, so a failure queued after a
        commit whose acknowledgement was lost is dropped), or forgotten with its lease lost.
        """
        with self._table.lock:
            flight.writing = True
        try:
            if result.outcome not in _COMMITS_HANDLER_CONN:
                _roll_back(conn)
                self._completer.queue_outcome(flight, result)
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
                self._completer.queue_outcome(flight, failed)
                return
            if report.lost:
                _roll_back(conn)
                _logger.warning(
                    "job %s: lease lost before its outcome was written; the handler's "
                    "writes on ctx.conn were rolled back",
                    flight.job.id,
                )
                self._table.forget(flight)
                return
            self._table.forget(flight)
            token = result.lease_token
            self._events.emit(
                report_events(report, {token: result}, {token: flight}, wants=self._events.wants)
            )
        finally:
            self._pool.putconn(conn)

    def _resolve(self, flight: InFlight) -> None:
        """After the handler returned: an attempt whose outcome was neither written nor
        queued (an error escaped the finish) is abandoned with its lease left to expire, so
        that no heartbeat renews it and a reaper takes the job."""
        # The common case, read without the lock: only this thread sets ``writing`` on an
        # attempt it started, and nothing clears it.
        if flight.writing:
            return
        with self._table.lock:
            held = self._table.by_token.get(flight.job.lease_token) is flight
            unresolved = not flight.writing and held
        if unresolved:
            _logger.error(
                "job %s: its outcome could not be written; leaving its lease to expire",
                flight.job.id,
            )
            self._table.abandon(flight)


# The outcomes that commit the handler's ctx.conn transaction: neither is a failure.
_COMMITS_HANDLER_CONN = frozenset({AttemptOutcome.SUCCEEDED, AttemptOutcome.SNOOZED})


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


class HoldsFlights(Protocol):
    """What holds attempts in flight: the table, or the pool that owns it."""

    def flights(self) -> list[InFlight]: ...


def local_timeouts(
    holder: HoldsFlights, now: Callable[[], float] = time.monotonic
) -> list[InFlight]:
    """Tell handlers past their deadline that they timed out (``ctx.cancelled``)."""
    late = []
    moment = now()
    for flight in holder.flights():
        overdue = flight.deadline is not None and moment > flight.deadline
        if overdue and flight.started and not flight.ctx.cancelled.is_set():
            flight.ctx.cancelled.set()
            late.append(flight)
    return late
