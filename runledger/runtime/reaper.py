"""The reaper: retries or dead-letters jobs whose lease expired or whose attempt timed out,
and hands back without counting the attempt those whose handler never started.

Any number of runtimes may reap at once: expired rows are locked with SKIP LOCKED and the lock
re-checks the expiry on the newest row version, so a completion that committed first wins and
the reaper never overwrites it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from runledger.core.retry import DEFAULT_RETRY_POLICY
from runledger.core.status import AttemptOutcome
from runledger.errors import LeaseExpired, TimedOut
from runledger.postgres.attempts import AttemptResult, Expired, finish, lock_expired
from runledger.postgres.maintenance import (
    SETTLE_BATCH,
    settle_finished_jobs,
    vacuum_jobs_if_needed,
)
from runledger.postgres.store import Store
from runledger.postgres.workers import GONE_AFTER_LEASES, delete_gone_workers
from runledger.runtime import outcome
from runledger.runtime.events import EventStream, LostLease, lost_lease, report_events
from runledger.runtime.inflight import InFlight
from runledger.runtime.registry import Registry

_logger = logging.getLogger("runledger.reaper")

BATCH = 100
SETTLE_BUDGET = 1.0
"""Seconds a reaper round may spend moving an upgraded database's finished jobs."""
# Seconds between checks of the jobs table's dead rows (see runledger.postgres.maintenance).
VACUUM_EVERY = 10.0
# The most of its time a reaper gives to VACUUM. A VACUUM scans every index of the whole jobs
# table, finished jobs kept for retention included (about a second beside 8 million of them),
# so after a long one the next waits until ten times its duration has passed.
VACUUM_SHARE = 0.1


# Seconds between deletions of the workers rows not seen for GONE_AFTER_LEASES leases.
FORGET_WORKERS_EVERY = 30.0


def vacuum_gap(took: float) -> float:
    """Seconds from the start of a VACUUM that took ``took`` seconds to the next check."""
    return max(VACUUM_EVERY, took / VACUUM_SHARE)


UNCOUNTED_RELEASES = 3
"""Times a job's attempt is released uncounted after its worker died before the handler
started; after that it is charged like any expired lease. A handler that kills its process
within milliseconds of starting (before the runtime marks it started) would otherwise run
forever."""


class Reaper:
    """Reaps expired and timed-out attempts every ``interval`` seconds, and vacuums the jobs
    table when dead rows pile up faster than autovacuum visits (``vacuum=False`` to leave
    that to autovacuum alone).

    ``on_reaped(lease_token)`` is called for each attempt taken back; it returns the attempt
    if this process held it and did not know it lost yet (``WorkerPool.mark_lost``). Each
    expired lease (not a timeout) is reported to ``events`` as a ``LostLease``, ``mine`` for
    such an attempt; outcome events carry the job's queue."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        interval: float,
        on_reaped: Callable[[uuid.UUID], InFlight | None] = lambda token: None,
        vacuum: bool = True,
        events: EventStream | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._events = events if events is not None else EventStream([registry.hooks])
        self.interval = interval
        self._on_reaped = on_reaped
        self.vacuum = vacuum
        self._vacuumed = 0.0
        self._vacuum_gap = VACUUM_EVERY
        self._workers_forgotten: float | None = None

    def step(self, stop: threading.Event) -> None:
        """Reap until nothing is left, vacuum the jobs table when it needs it (at most every
        ``VACUUM_EVERY`` seconds, less often after a long VACUUM: ``vacuum_gap``), then wait
        ``interval``."""
        while not stop.is_set() and self.reap_once() == BATCH:
            pass
        self.settle(stop)
        now = time.monotonic()
        if self.vacuum and now - self._vacuumed >= self._vacuum_gap:
            self._vacuumed = now
            if vacuum_jobs_if_needed(self._store):
                took = time.monotonic() - now
                self._vacuum_gap = vacuum_gap(took)
                _logger.info("vacuumed runledger.jobs in %.2f s", took)
        if self._workers_forgotten is None or now - self._workers_forgotten >= FORGET_WORKERS_EVERY:
            self._workers_forgotten = now
            self.forget_gone_workers()
        stop.wait(self.interval)

    def settle(self, stop: threading.Event | None = None) -> int:
        """Move finished jobs left in the hot table (an upgraded database's history) to
        ``runledger.job_history`` in batches, for at most ``SETTLE_BUDGET`` seconds; return
        how many moved."""
        started = time.monotonic()
        moved = 0
        while stop is None or not stop.is_set():
            batch = settle_finished_jobs(self._store)
            moved += batch
            if batch < SETTLE_BATCH or time.monotonic() - started >= SETTLE_BUDGET:
                break
        if moved:
            _logger.info(
                "moved %d finished jobs to runledger.job_history in %.2f s",
                moved,
                time.monotonic() - started,
            )
        return moved

    def forget_gone_workers(self) -> list[str]:
        """Delete the ``runledger.workers`` rows not seen for ``GONE_AFTER_LEASES`` of their
        leases (their workers died without a clean stop); return their ids. One transaction.
        """
        with self._store.transaction() as conn:
            gone = delete_gone_workers(conn)
        for worker_id in gone:
            _logger.warning(
                "deleted the workers row of %s: not seen for %g of its leases",
                worker_id,
                GONE_AFTER_LEASES,
            )
        return gone

    def reap_once(self) -> int:
        """Reap one batch in one transaction; return how many jobs it took."""
        with self._store.transaction() as conn:
            expired = lock_expired(conn, limit=BATCH)
            if not expired:
                return 0
            results = [self._result(e) for e in expired]
            report = finish(conn, results)
        lost: list[LostLease] = []
        for e in expired:
            if e.started or e.crash_releases >= UNCOUNTED_RELEASES:
                _logger.warning("reaped job %s (attempt %d): %s", e.id, e.attempt, e.outcome)
            else:
                _logger.warning(
                    "released job %s: its worker stopped renewing the lease before the "
                    "handler started; the attempt is not counted",
                    e.id,
                )
            # Tells a handler of this process at once; returns the attempt only if it was ours
            # and the heartbeat had not found it lost first, so that it is reported once.
            flight = self._on_reaped(e.lease_token)
            if e.outcome is AttemptOutcome.LEASE_EXPIRED:
                lost.append(self._lost(e, flight))
        results_by_token = {r.lease_token: r for r in results}
        reaped = {e.lease_token: e for e in expired}
        self._events.emit(
            report_events(report, results_by_token, reaped=reaped, wants=self._events.wants)
        )
        self._events.lost(lost)
        return len(expired)

    @staticmethod
    def _lost(expired: Expired, flight: InFlight | None) -> LostLease:
        if flight is not None:
            return lost_lease(flight, found_by="reaper")
        return LostLease(
            job_id=expired.id,
            lease_token=expired.lease_token,
            job_type=expired.job_type,
            queue=expired.queue,
            attempt=expired.attempt,
            max_attempts=expired.max_attempts,
            found_by="reaper",
            mine=False,
        )

    def _result(self, expired: Expired) -> AttemptResult:
        handler = self._registry.get(expired.job_type)
        policy = handler.retry if handler is not None else DEFAULT_RETRY_POLICY
        if not expired.started and expired.crash_releases < UNCOUNTED_RELEASES:
            return outcome.released(
                expired,
                LeaseExpired(
                    "the lease expired before the handler started (the job waited in a "
                    "worker's prefetch): released, the attempt not counted"
                ),
            )
        if expired.outcome is AttemptOutcome.TIMED_OUT:
            error: Exception = TimedOut("the attempt ran past its timeout")
        else:
            error = LeaseExpired("the lease expired: the worker stopped renewing it")
        return outcome.failure(expired, error, policy, outcome=expired.outcome, tb="")
