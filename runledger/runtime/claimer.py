"""The claimer: a service that claims due jobs up to the free capacity and hands them to the
executor, and after a claim whose reply was lost hands back the jobs it may have leased."""

from __future__ import annotations

import contextlib
import datetime
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence

from runledger.errors import ClaimInterrupted
from runledger.postgres.attempts import (
    GENERIC_PLAN_SESSION,
    ClaimedJob,
    claim_round,
    finish,
    orphaned_attempts,
)
from runledger.postgres.held import HeldConnection
from runledger.postgres.store import Store
from runledger.runtime import outcome
from runledger.runtime.inflight import InFlight, InFlightTable
from runledger.runtime.loop import Loop

_logger = logging.getLogger("runledger.worker")

# The claimer pauses while this many times the capacity of outcomes wait to be written.
UNWRITTEN_LIMIT_FACTOR = 3

# A job that waited longer than this past its due time (and a poll's sleep) waited for a free
# slot, not for the claimer to wake: a NOTIFY wakes it within milliseconds, and a queue that
# keeps up drains a burst that fills every slot faster.
BACKLOG_WAIT = 1.0


class Claimer:
    """Claims up to ``capacity`` attempts at a time into ``runnable``; a service on a
    ``Loop`` (``loop.start()``, ``stop_claiming()``, ``loop.stop(timeout)``).

    It claims in one statement on a connection it holds in autocommit mode, and commits
    before any handler runs; then sleeps until ``wake`` is set (a NOTIFY, half the capacity
    freed, the completer's backlog written) or ``poll_interval`` passes.
    """

    def __init__(
        self,
        store: Store,
        table: InFlightTable,
        runnable: queue.SimpleQueue[InFlight | None],
        new_flight: Callable[[ClaimedJob], InFlight],
        *,
        worker_id: str,
        queues: Sequence[str],
        defaults: Mapping[str, Mapping[str, int | None]],
        capacity: int,
        lease_seconds: float,
        poll_interval: float,
        session_settings: bool = True,
    ) -> None:
        # Session settings would outlive the transaction on PgBouncer in transaction mode
        # (see runledger.postgres.held); without them the claim sets its plan mode locally.
        self._conn = HeldConnection(
            store.pool, settings=GENERIC_PLAN_SESSION if session_settings else None
        )
        self._table = table
        self._runnable = runnable
        self._new_flight = new_flight
        self._worker_id = worker_id
        self._queues = tuple(queues)
        self._defaults = dict(defaults)
        self.capacity = capacity
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._claiming = True
        # A claim failed: the server may have committed it, leasing jobs this runtime never
        # learnt of; the next step hands them back first.
        self._unsure = False
        # The last claim found flow control on these queues: the next sends the flow-control
        # claim first (claim_round).
        self._flow_control = False
        self._backlog_wait = datetime.timedelta(seconds=poll_interval + BACKLOG_WAIT)
        self.backlog = False
        """Whether the last claim took every job it asked for and one of them had waited
        past its due time longer than ``BACKLOG_WAIT`` (and ``poll_interval``): due jobs
        wait for this runtime's slots (the pruner paces itself while it is so)."""
        self.wake = threading.Event()
        self.loop = Loop("runledger-claimer-0", self._step, on_exit=self._conn.close)

    def stop_claiming(self) -> None:
        """Claim nothing more (the first step of a graceful shutdown)."""
        with self._table.lock:
            self._claiming = False
        self.loop.signal_stop()
        self.wake.set()

    def _step(self, stop: threading.Event) -> None:
        # Cleared before the capacity is read: a slot freed (or a NOTIFY) after this sets it
        # again, one before it shows in ``free``. Clearing only when claiming left a wake
        # that came while the capacity was full set, and the loop spun on it.
        self.wake.clear()
        table = self._table
        with table.lock:
            free = self.capacity - table.busy if self._claiming else 0
            # Claim no further ahead than the completer can write: finished jobs whose
            # outcomes wait in memory still hold leases and make every write slower.
            if table.unwritten >= UNWRITTEN_LIMIT_FACTOR * self.capacity:
                free = 0
            # Threads that would take a claimed job at once: those jobs are marked started
            # by the claim itself; the rest wait in prefetch, unmarked until they start.
            start_now = max(table.idle - self._runnable.qsize(), 0)
        claimed: tuple[ClaimedJob, ...] = ()
        deferred = 0
        if self._unsure:
            self._release_orphans()
        if free > 0 and self._defaults:
            session_plan = bool(self._conn.settings)
            with self._conn.autocommit() as conn:
                # One statement that commits by itself, unless the plan mode must be set
                # for this transaction only.
                alone = session_plan or conn.prepare_threshold is None
                self._unsure = True  # until the claim's reply is read
                with contextlib.nullcontext() if alone else conn.transaction():
                    got = claim_round(
                        conn,
                        worker=self._worker_id,
                        queues=self._queues,
                        job_types=list(self._defaults),
                        limit=free,
                        lease_seconds=self._lease_seconds,
                        defaults=self._defaults,
                        session_generic_plan=session_plan,
                        start_now=start_now,
                        flow_control=self._flow_control,
                    )
                self._unsure = False
            claimed, deferred = got.jobs, got.deferred
            self._flow_control = got.flow_control
            self.backlog = len(claimed) == free and _waited(claimed) > self._backlog_wait
            for job in claimed:
                flight = self._new_flight(job)
                table.adopt(flight)
                self._runnable.put(flight)
        if free > 0 and len(claimed) == free:
            return  # there may be more: claim again once a slot frees up
        if claimed and deferred:
            # Flow control turned candidates away (a key or queue that filled up in this
            # claim): the next claim passes over them to the jobs behind, so claim again now.
            # Not when it got nothing: a queue or key another claim was admitting would spin.
            return
        if not stop.is_set():
            self.wake.wait(self._poll_interval)

    def _release_orphans(self) -> None:
        """Hand back, uncounted, the jobs a failed claim may have leased to this runtime: its
        running attempts it does not hold (their handlers never started)."""
        held = self._table.held_tokens()
        with self._conn.transaction() as conn:
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
        self._unsure = False
        if orphans:
            _logger.warning(
                "released %d jobs of a claim whose reply was lost with its connection",
                len(orphans),
            )


def _waited(claimed: Sequence[ClaimedJob]) -> datetime.timedelta:
    """The longest any of ``claimed`` waited past its due time (the server's clock)."""
    return max(
        (job.started_at - job.run_at for job in claimed if job.run_at is not None),
        default=datetime.timedelta(0),
    )
