"""The completer: a service that writes attempts' outcomes in batches (and marks the start of
handlers that waited in prefetch), feeding what it wrote to the event stream."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence

import psycopg

from runledger.core.retry import DEFAULT_RETRY_POLICY
from runledger.errors import ConnectionNotUsable, OutcomeNotWritable
from runledger.postgres.attempts import AttemptResult, finish, mark_started
from runledger.postgres.held import HeldConnection
from runledger.postgres.liveness import connection_broke
from runledger.postgres.store import Store
from runledger.runtime import outcome
from runledger.runtime.events import EventStream, report_events
from runledger.runtime.inflight import InFlight, InFlightTable
from runledger.runtime.loop import IMMEDIATE_RETRIES, Loop
from runledger.runtime.registry import Registry

_logger = logging.getLogger("runledger.worker")

COMPLETION_BATCH = 500


def refused(err: BaseException) -> bool:
    """True if a write failed for what it wrote, not for the connection or the database
    being away: writing it again would fail again."""
    if connection_broke(err):
        return False
    return not isinstance(err, (psycopg.OperationalError, OSError, ConnectionNotUsable))


class Completer:
    """Writes queued outcomes, a batch per transaction; a service on a ``Loop``.

    It holds a connection of the store's pool: a batch without workflow steps is one
    statement committed by itself, a batch with them one transaction with the workflows'
    advance. It retries a batch while the database is away (the lease fence makes a repeated
    write harmless); a batch the database refuses for what it holds is written one outcome
    at a time, so that one bad outcome holds back no other. ``wake`` is called after each
    written batch (the claimer may have been held back by the backlog). Thread-safe
    producers: ``queue_outcome`` and ``queue_mark``.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        table: InFlightTable,
        events: EventStream,
        *,
        wake: Callable[[], None],
    ) -> None:
        self._conn = HeldConnection(store.pool)
        self._registry = registry
        self._table = table
        self._events = events
        self._wake = wake
        # Outcomes to write, and (with None) handlers that started and need marking.
        self._queue: queue.SimpleQueue[tuple[InFlight, AttemptResult | None]] = queue.SimpleQueue()
        self._pending: list[tuple[InFlight, AttemptResult]] = []
        self._to_mark: list[InFlight] = []
        self._failures = 0  # failed writes in a row
        self.loop = Loop("runledger-completer-0", self._step, on_exit=self._conn.close)

    def queue_outcome(self, flight: InFlight, result: AttemptResult) -> None:
        """Have ``result`` written; the attempt is forgotten once it is."""
        with self._table.lock:
            flight.writing = True
            self._table.unwritten += 1
        self._queue.put((flight, result))

    def queue_mark(self, flight: InFlight) -> None:
        """Have the ledger say that this prefetched attempt's handler started, unless its
        outcome is written first."""
        self._queue.put((flight, None))

    def _step(self, stop: threading.Event) -> None:
        if not self._pending and not self._to_mark:
            try:
                self._take(self._queue.get(timeout=0.2))
            except queue.Empty:
                return
        while len(self._pending) < COMPLETION_BATCH:
            try:
                self._take(self._queue.get_nowait())
            except queue.Empty:
                break
        try:
            self._write_marks()
            if self._pending:
                self._write(self._pending)
                self._pending = []
        except Exception as err:
            self._failures += 1
            self.loop.note_error(err)
            if self._pending and refused(err):
                _logger.error(
                    "the database refused a batch of %d outcomes (%s); writing them one by one",
                    len(self._pending),
                    str(err).strip(),
                )
                self._write_one_by_one()
                return
            # A connection that broke in use is replaced at once; a database that is away
            # is waited for.
            at_once = self._failures <= IMMEDIATE_RETRIES and connection_broke(err)
            _logger.warning(
                "could not write %d outcomes (%s); retrying %s",
                len(self._pending),
                str(err).strip(),
                "at once" if at_once else "in 0.5 s",
            )
            if not at_once:
                stop.wait(0.5)
            return
        self._failures = 0

    def _take(self, item: tuple[InFlight, AttemptResult | None]) -> None:
        flight, result = item
        if result is None:
            self._to_mark.append(flight)
        else:
            self._pending.append((flight, result))

    def _write_marks(self) -> None:
        """Mark started handlers that waited in prefetch, unless their outcome is being
        written already (it supersedes the mark) or their lease is gone."""
        with self._table.lock:
            marks = [f for f in self._to_mark if not (f.writing or f.lost or f.marked)]
        if marks:
            try:
                with self._conn.autocommit() as conn:
                    mark_started(conn, [(f.job.id, f.job.lease_token) for f in marks])
            except Exception as err:
                if not refused(err):
                    raise  # the connection: the loop writes them again
                # A refused mark must not hold back the outcomes: these attempts would be
                # released uncounted if their worker died, as if they never started.
                _logger.error("could not mark %d attempts started (%s)", len(marks), err)
            for flight in marks:
                flight.marked = True
        self._to_mark = []

    def _write(self, batch: Sequence[tuple[InFlight, AttemptResult]]) -> None:
        results = {result.lease_token: result for _, result in batch}
        # A workflow step's outcome commits with its workflow's advance; other outcomes are
        # one statement, which commits by itself.
        steps = any(flight.job.step_id is not None for flight, _ in batch)
        held = self._conn
        with held.transaction() if steps else held.autocommit() as conn:
            report = finish(conn, list(results.values()))
        with self._table.lock:
            self._table.unwritten -= len(batch)
        self._wake()
        for flight, _ in batch:
            self._table.forget(flight)
        for job_id in report.lost:
            _logger.warning("job %s: lease lost before its outcome was written; dropped", job_id)
        flights = {flight.job.lease_token: flight for flight, _ in batch}
        self._events.emit(report_events(report, results, flights, wants=self._events.wants))

    def _write_one_by_one(self) -> None:
        """Write a refused batch's outcomes alone: one the database cannot take is replaced
        by a failure that says why, and if even that is refused its attempt is abandoned,
        its lease left to expire for the reaper."""
        while self._pending:
            flight, result = self._pending[0]
            try:
                self._write([(flight, result)])
            except Exception as err:
                if not refused(err):
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
                    self._write([(flight, replacement)])
                except Exception as again:
                    if not refused(again):
                        raise
                    _logger.error(
                        "job %s: no outcome of its attempt could be written (%s); leaving "
                        "its lease to expire",
                        flight.job.id,
                        again,
                    )
                    with self._table.lock:
                        self._table.unwritten -= 1
                    self._table.abandon(flight)
            self._pending.pop(0)
