"""The pruner: deletes finished jobs and workflow runs past the retention policy.

Every runtime with a policy runs one; an advisory lock taken by each batch keeps it to one at a
time (``runledger.postgres.retention``). A round deletes batches, oldest first, until nothing
is due or it has used its time budget, then sweeps a few windows of orphan events (a pass over
the old events at most once an hour).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import psycopg

from runledger.core.retention import Retention
from runledger.postgres.maintenance import vacuum_history_if_needed
from runledger.postgres.retention import (
    JOB_BATCH,
    RUN_BATCH,
    Pruned,
    prune_jobs,
    prune_runs,
    sweep_orphan_events,
)
from runledger.postgres.store import Store

_logger = logging.getLogger("runledger.pruner")

T = TypeVar("T")

PRUNE_EVERY = 60.0
"""Seconds between rounds."""
ROUND_BUDGET = 10.0
"""Seconds a round may spend deleting before it waits for the next: at 2,000 jobs a batch
this is far above what a busy queue finishes in a minute, while the lock it takes per batch
is short."""
SWEEP_WINDOWS = 20
"""Windows of orphan-event ids examined per round."""
SWEEP_EVERY = 3600.0
"""Seconds from the end of one pass of the orphan-event sweep to the start of the next. A
pass reads every event older than the shortest keep (those of dead letters kept longer, of
jobs scheduled far ahead, of open runs), probing for each whether its job or run still
exists: about 3 buffers an event, 2 s of the server's time for a round's 100,000 on the
machine of benchmarks/README.md. Orphans are rare (deleted by hand, or by a version that
kept them), so an hour's wait costs little; starting again at once, as before, read those
events over and over in every round."""


class Pruner:
    """Prunes what ``retention`` no longer keeps, every ``interval`` seconds, then VACUUMs
    the history tables it deleted from once their dead rows pile up (``vacuum=False`` leaves
    that to autovacuum)."""

    def __init__(
        self,
        store: Store,
        retention: Retention,
        *,
        interval: float = PRUNE_EVERY,
        budget: float = ROUND_BUDGET,
        vacuum: bool = True,
        sweep_every: float = SWEEP_EVERY,
    ) -> None:
        self._store = store
        self.retention = retention
        self.interval = interval
        self.budget = budget
        self.vacuum = vacuum
        self.sweep_every = sweep_every
        self._sweep_after = 0
        self._pass_ended: float | None = None  # time.monotonic() at the end of the last pass
        self.total = Pruned()

    def step(self, stop: threading.Event) -> None:
        """One round (``prune_once``), then wait ``interval``."""
        self.prune_once(stop)
        stop.wait(self.interval)

    def prune_once(self, stop: threading.Event | None = None) -> Pruned:
        """Delete due jobs and runs in batches, each its own transaction, until none is due,
        ``stop`` is set, another pruner holds the lock, or the round's budget is spent; then
        sweep up to ``SWEEP_WINDOWS`` windows of orphan events (unless the sweep's last pass
        ended less than ``sweep_every`` seconds ago). Returns what it deleted."""
        started = time.monotonic()
        done = Pruned()

        def more() -> bool:
            return (stop is None or not stop.is_set()) and time.monotonic() - started < self.budget

        for status, keep in self.retention.keeps().items():
            for prune, batch in ((prune_jobs, JOB_BATCH), (prune_runs, RUN_BATCH)):
                while more():
                    pruned = self._batch(partial(prune, status=status, keep=keep, limit=batch))
                    if pruned is None:
                        break
                    done += pruned
                    if not pruned.locked:
                        return self._finish(done, started)
                    if pruned.jobs + pruned.runs < batch:
                        break
        shortest = min(self.retention.keeps().values(), default=None)
        if shortest is not None:
            done += self._sweep(shortest, more)
        if done.rows and self.vacuum:
            vacuumed = vacuum_history_if_needed(self._store)
            if vacuumed:
                _logger.info(
                    "vacuumed %s after pruning", ", ".join(f"runledger.{t}" for t in vacuumed)
                )
        return self._finish(done, started)

    def _sweep(self, keep: datetime.timedelta, more: Callable[[], bool]) -> Pruned:
        deleted = 0
        ended = self._pass_ended
        if (
            self._sweep_after == 0
            and ended is not None
            and (time.monotonic() - ended < self.sweep_every)
        ):
            return Pruned()  # the last pass ended less than sweep_every ago
        for _ in range(SWEEP_WINDOWS):
            if not more():
                break
            swept = self._batch(partial(sweep_orphan_events, keep=keep, after=self._sweep_after))
            if swept is None or not swept.locked:
                break
            deleted += swept.deleted
            self._sweep_after = swept.next_after
            if swept.next_after == 0:
                self._pass_ended = time.monotonic()
                break
        return Pruned(events=deleted)

    def _batch(self, work: Callable[[psycopg.Connection[Any]], T]) -> T | None:
        """Run one batch in its own transaction; None if it gave up waiting on a lock."""
        try:
            with self._store.transaction() as conn:
                return work(conn)
        except psycopg.errors.LockNotAvailable:
            _logger.info("a prune batch waited a second for a lock; the next round retries it")
            return None

    def _finish(self, done: Pruned, started: float) -> Pruned:
        self.total += done
        if done.rows:
            _logger.info(
                "pruned %d jobs and %d workflow runs (%d of their jobs), %d attempts and "
                "%d events in %.2f s",
                done.jobs, done.runs, done.run_jobs, done.attempts, done.events,
                time.monotonic() - started,
            )  # fmt: skip
        return done
