"""The heartbeat: renews every lease this runtime holds in one statement, which also writes
the handlers' latest ``ctx.progress`` (coalesced: one write per renewal, however many
reports), and marks its ``runledger.workers`` row seen in another, every lease/3 (the first
beat does both at once).

A lease it finds lost is reported on the runtime's event stream (``LostLease``), and so is
whether the workers row is the oldest live one (``WorkerSeen``), which metrics read."""

from __future__ import annotations

import logging
import threading
import time

from runledger.core.status import EventKind
from runledger.postgres.attempts import renew_leases
from runledger.postgres.store import Store
from runledger.postgres.workers import job_statuses
from runledger.runtime.events import LostLease, WorkerSeen, lost_lease
from runledger.runtime.hooks import LifecycleEvent
from runledger.runtime.presence import Presence
from runledger.runtime.registry import Registry
from runledger.runtime.worker import InFlight, WorkerPool, local_timeouts

_logger = logging.getLogger("runledger.heartbeat")


class Heartbeat:
    """Keeps leases alive and tells handlers when theirs is gone or their time is up; keeps
    the runtime's ``presence`` row fresh when given one."""

    def __init__(
        self,
        store: Store,
        pool: WorkerPool,
        registry: Registry,
        *,
        lease_seconds: float,
        presence: Presence | None = None,
    ) -> None:
        self._store = store
        self._pool = pool
        self._registry = registry
        self._lease_seconds = lease_seconds
        self._presence = presence
        # Renew well before expiry; check local deadlines at least once a second.
        self.interval = min(lease_seconds / 3, 1.0)
        # The first beat renews and touches: metrics learn at once whether to read the depth.
        self._since_renew = lease_seconds / 3

    def step(self, stop: threading.Event) -> None:
        """One beat: local timeouts every time, lease renewal and presence every lease/3."""
        for flight in local_timeouts(self._pool):
            flight.ctx.logger.warning("job %s passed its timeout; cancelled", flight.job.id)
        if self._since_renew >= self._lease_seconds / 3:
            self._since_renew = 0.0
            self.renew()
            self.touch()
        self._since_renew += self.interval
        stop.wait(self.interval)

    def renew(self) -> None:
        """Renew all leases now; flag the lost ones, fire ``job.cancelled`` hooks for the
        cancelled ones and report the others as ``LostLease`` on the event stream."""
        leases = self._pool.leases()
        if not leases:
            return
        # The latest ctx.progress of each handler, written with its renewal.
        progress = self._pool.unwritten_progress()
        with self._store.transaction() as conn:
            held = renew_leases(
                conn,
                leases,
                lease_seconds=self._lease_seconds,
                progress={token: text for token, (_, text) in progress.items()},
            )
            gone = [job_id for job_id, _, _ in leases if job_id not in held]
            statuses = job_statuses(conn, gone)
        self._pool.progress_written(
            {
                token: progress[token][0]
                for job_id, token, _ in leases
                if job_id in held and token in progress
            }
        )
        events = []
        lost: list[LostLease] = []
        now = time.monotonic()
        for job_id, token, _ in leases:
            if job_id in held:
                continue
            status = statuses.get(job_id)
            # A renewal that crosses the commit of this attempt's own outcome finds the job
            # already finished by it: not a lost lease. Whether an outcome still being
            # written lost its lease, that write finds out; a cancel is reported here.
            flight = self._pool.mark_lost(token, unless_writing=status != "cancelled")
            if flight is None:
                continue  # finished meanwhile, being written, or already known
            if status == "cancelled":
                flight.ctx.logger.warning("job %s lost its lease (%s)", job_id, status)
                events.append(cancelled_event(flight))
            elif flight.deadline is not None and now > flight.deadline:
                # A reaper took it back as timed out (its outcome line says so): no lost lease.
                flight.ctx.logger.info(
                    "job %s was taken back after its timeout (%s)", job_id, status
                )
            else:
                lost.append(lost_lease(flight, found_by="heartbeat", status=status))
        self._pool.events.emit(events)
        self._pool.events.lost(lost)

    def touch(self) -> None:
        """Mark this runtime's workers row seen now. A failure is logged, not raised: it must
        not hold up the next renewal (a row left unrefreshed shows as stale, as it should)."""
        if self._presence is None:
            return
        try:
            oldest = self._presence.touch()
        except Exception:
            _logger.exception("could not mark worker %s seen", self._presence.worker_id)
            oldest = False  # unsure: leave the depth to a worker that could touch its row
        self._pool.events.seen(WorkerSeen(worker_id=self._presence.worker_id, oldest=oldest))


def cancelled_event(flight: InFlight) -> LifecycleEvent:
    """The ``job.cancelled`` hook event for an attempt found cancelled."""
    return LifecycleEvent(
        kind=EventKind.JOB_CANCELLED,
        job_id=flight.job.id,
        job_type=flight.job.job_type,
        attempt=flight.job.attempt,
        workflow_run_id=flight.job.workflow_run_id,
        step_key=flight.job.step_key,
    )
