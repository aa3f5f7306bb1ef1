"""The in-flight table: the attempts one runtime holds, keyed by lease token, and the counts
the claimer, the executor and the completer share (busy slots, idle threads, unwritten
outcomes)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

import attrs

from runledger.postgres.attempts import ClaimedJob
from runledger.runtime.context import JobContext


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
    ``started_at`` (``time.monotonic()``) is set when the handler starts and ``duration``
    when it returns (for the log lines and other readers of the event stream).
    ``progress`` is the JSON text of the latest ``ctx.progress`` report, ``progress_seq``
    counts the reports and ``progress_written`` is the count the ledger has: the heartbeat
    writes the latest with its renewal when the two differ, so reports coalesce.
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
    started_at: float | None = None
    duration: float | None = None
    progress: str | None = None
    progress_seq: int = 0
    progress_written: int = 0


class InFlightTable:
    """The attempts a runtime holds and the counts its services share. Thread-safe.

    ``lock`` guards every field of the table and of its ``InFlight`` records; ``changed``
    (on that lock) is notified whenever an attempt ends or a slot frees up.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.by_token: dict[uuid.UUID, InFlight] = {}
        self.busy = 0  # claimed attempts not yet done with their thread
        self.idle = 0  # executor threads waiting for a job
        self.unwritten = 0  # outcomes handed to the completer and not yet written
        # Attempts forgotten without an outcome, their leases left to expire: not orphans.
        self.abandoned: set[uuid.UUID] = set()

    def adopt(self, flight: InFlight) -> None:
        """Hold a claimed attempt: its lease is renewed from now on."""
        with self.lock:
            self.by_token[flight.job.lease_token] = flight
            self.busy += 1

    def forget(self, flight: InFlight) -> None:
        """Stop holding an attempt (its outcome was written, or it is abandoned)."""
        with self.changed:
            if self.by_token.get(flight.job.lease_token) is flight:
                del self.by_token[flight.job.lease_token]
            self.changed.notify_all()

    def abandon(self, flight: InFlight) -> None:
        """Forget an attempt whose outcome will never be written; its lease expires."""
        with self.lock:
            self.abandoned.add(flight.job.lease_token)
        self.mark_lost(flight.job.lease_token)
        self.forget(flight)

    def mark_lost(self, lease_token: uuid.UUID, *, unless_writing: bool = False) -> InFlight | None:
        """Note that this attempt's lease is gone and tell its handler (``ctx.cancelled``).
        Returns the attempt if it was held and not already known lost. With
        ``unless_writing``, an attempt whose outcome is being written is left alone."""
        with self.lock:
            flight = self.by_token.get(lease_token)
            if flight is None or flight.lost or (unless_writing and flight.writing):
                return None
            flight.lost = True
        flight.ctx.cancelled.set()
        return flight

    def report_progress(self, lease_token: uuid.UUID, progress: str) -> None:
        """Keep ``progress`` (JSON text) as the attempt's latest; nothing is written now."""
        with self.lock:
            flight = self.by_token.get(lease_token)
            if flight is not None:
                flight.progress = progress
                flight.progress_seq += 1

    def unwritten_progress(
        self, tokens: Iterable[uuid.UUID] | None = None
    ) -> dict[uuid.UUID, tuple[int, str]]:
        """(report count, JSON text) of the latest progress of each attempt held (of
        ``tokens``, or all) whose latest report is not written yet, by lease token."""
        with self.lock:
            if tokens is None:
                flights = list(self.by_token.values())
            else:
                flights = [f for t in tokens if (f := self.by_token.get(t)) is not None]
            return {
                f.job.lease_token: (f.progress_seq, f.progress)
                for f in flights
                if f.progress is not None and f.progress_seq != f.progress_written
            }

    def progress_written(self, written: Mapping[uuid.UUID, int]) -> None:
        """Note that the reports counted in ``written`` (by lease token) are in the ledger."""
        with self.lock:
            for token, seq in written.items():
                flight = self.by_token.get(token)
                if flight is not None and seq > flight.progress_written:
                    flight.progress_written = seq

    def flights(self) -> list[InFlight]:
        """Every attempt held."""
        with self.lock:
            return list(self.by_token.values())

    def of_job(self, job_id: uuid.UUID) -> list[InFlight]:
        """The attempts of ``job_id`` held (usually one)."""
        with self.lock:
            return [f for f in self.by_token.values() if f.job.id == job_id]

    def running(self) -> list[InFlight]:
        """Attempts whose handler started and has not returned; call with ``lock`` held."""
        return [f for f in self.by_token.values() if f.started and not f.done]

    def held_tokens(self) -> list[uuid.UUID]:
        """The lease tokens of every attempt held or abandoned on purpose."""
        with self.lock:
            return [*self.by_token, *self.abandoned]

    def leases(
        self, now: Callable[[], float] = time.monotonic
    ) -> list[tuple[uuid.UUID, uuid.UUID, float | None]]:
        """(job id, lease token, seconds left before the timeout) of every attempt whose
        lease is still held; an attempt waiting for a thread has its whole timeout left."""
        moment = now()
        with self.lock:
            flights = [f for f in self.by_token.values() if not f.lost]
        leases: list[tuple[uuid.UUID, uuid.UUID, float | None]] = []
        for f in flights:
            remaining: float | None = None
            if f.job.timeout_seconds is not None:
                deadline = f.deadline
                remaining = float(f.job.timeout_seconds) if deadline is None else deadline - moment
            leases.append((f.job.id, f.job.lease_token, remaining))
        return leases
