"""The pruner: deletes finished jobs and workflow runs past the retention policy.

Every runtime with a policy runs one; an advisory lock taken by each batch keeps it to one at a
time (``runledger.postgres.retention``). A round deletes batches, oldest first, until nothing
is due or it has worked its time budget. When every state is pruned, the jobs' events are left
to their segment: the round then drops the segments of events that closed longer ago than the
shortest keep and opens a new one each period (``runledger.postgres.segments``). Otherwise the
events go with their jobs, and the round sweeps a few windows of orphan events (a pass over the
old events at most once an hour). While the queue has a backlog (its runtime's last claim
filled every free slot with jobs that waited more than a second past their due time) it paces
itself, as autovacuum's cost-based delay does: after each batch it pauses so that its work
takes at most the policy's ``busy_share`` of its time, and the saturated queue it shares the
server with keeps nearly all its speed. A queue that keeps up with its jobs has time to spare,
and the pruner deletes without pausing. A round that ran out of budget with jobs still due is
followed at once by the next.
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
from runledger.postgres.segments import Dropped, drop_segment, open_segment
from runledger.postgres.store import Store

_logger = logging.getLogger("runledger.pruner")

T = TypeVar("T")

PRUNE_EVERY = 60.0
"""Seconds between rounds."""
ROUND_BUDGET = 10.0
"""Seconds of work (pauses aside) a round may spend deleting before it sweeps, vacuums and
starts the next: at 2,000 jobs a batch this is far above what a busy queue finishes in a
minute, while the lock it takes per batch is short."""
BEHIND_WARNING = 600.0
"""Seconds the pruner may end every round with jobs still due before it warns, and again
after as many more."""
SWEEP_WINDOWS = 20
"""Windows of orphan-event ids examined per round."""
SEGMENT_DROPS = 3
"""Segments of events dropped (or cleaned) per round at most: a pruner that was stopped for
days catches up over a few rounds, one transaction each."""
SWEEP_EVERY = 3600.0
"""Seconds from the end of one pass of the orphan-event sweep to the start of the next. A
pass reads every event older than the shortest keep (those of dead letters kept longer, of
jobs scheduled far ahead, of open runs), probing for each whether its job or run still
exists: about 3 buffers an event, 2 s of the server's time for a round's 100,000 on the
machine of benchmarks/README.md. Orphans are rare (deleted by hand, or by a version that
kept them), so an hour's wait costs little; starting again at once, as before, read those
events over and over in every round."""


class _Pace:
    """A round's clock: the seconds it worked, and the pauses that keep its work to ``share``
    of its time while the queue is busy."""

    def __init__(self, share: float, stop: threading.Event) -> None:
        self.share = share
        self.stop = stop
        self.worked = 0.0
        self.paused = 0.0

    def after(self, took: float, busy: bool) -> None:
        """Count ``took`` seconds of work; while ``busy``, pause for the rest of its share."""
        self.worked += took
        if busy and self.share < 1:
            pause = took * (1 - self.share) / self.share
            self.paused += pause
            self.stop.wait(pause)


class Pruner:
    """Prunes what ``retention`` no longer keeps, every ``interval`` seconds, then VACUUMs
    the history tables it deleted from once their dead rows pile up (``vacuum=False`` leaves
    that to autovacuum). While ``busy()`` (the runtime's: its queue has a backlog), its work
    takes at most ``retention.busy_share`` of its time; a round that worked ``budget``
    seconds with jobs still due is followed at once by the next, and ``BEHIND_WARNING``
    seconds of that logs a warning."""

    def __init__(
        self,
        store: Store,
        retention: Retention,
        *,
        interval: float = PRUNE_EVERY,
        budget: float = ROUND_BUDGET,
        vacuum: bool = True,
        busy: Callable[[], bool] = lambda: False,
        sweep_every: float = SWEEP_EVERY,
        segment_length: datetime.timedelta | None = None,
    ) -> None:
        self._store = store
        self.retention = retention
        self.interval = interval
        self.budget = budget
        self.vacuum = vacuum
        self._busy = busy
        self.sweep_every = sweep_every
        policy_length = retention.segment_length()
        self.segment_length = (
            segment_length
            if policy_length is not None and segment_length is not None
            else policy_length
        )
        """How long a segment of the events collects them (``Retention.segment_length``, or
        the ``segment_length`` given, which tests shorten); None when the events go row by
        row with their jobs, because some state is kept forever."""
        self._sweep_after = 0
        self._pass_ended: float | None = None  # time.monotonic() at the end of the last pass
        self.total = Pruned()
        self.behind = False
        """Whether the last round ran out of budget with jobs or runs still due."""
        self._behind_since: float | None = None
        self._warned_at: float | None = None

    @property
    def behind_seconds(self) -> float:
        """Seconds since rounds began to end with jobs or runs still due (the first such
        round's end); 0.0 once a round caught up."""
        since = self._behind_since
        return 0.0 if since is None else time.monotonic() - since

    def step(self, stop: threading.Event) -> None:
        """One round (``prune_once``), then wait ``interval``, unless it fell behind."""
        done = self.prune_once(stop)
        if not (self.behind and done.rows):
            stop.wait(self.interval)

    def prune_once(self, stop: threading.Event | None = None) -> Pruned:
        """Delete due jobs and runs in batches, each its own transaction, until none is due,
        ``stop`` is set, another pruner holds the lock, or the round's budget is spent; then
        sweep up to ``SWEEP_WINDOWS`` windows of orphan events (unless the sweep's last pass
        ended less than ``sweep_every`` seconds ago). While ``busy()``, pauses after each
        transaction (on ``stop``) to keep to the policy's ``busy_share``. Returns what it
        deleted."""
        started = time.monotonic()
        pace = _Pace(self.retention.busy_share, stop or threading.Event())
        done = Pruned()
        self.behind = False

        def more() -> bool:
            if pace.stop.is_set():
                return False
            if pace.worked >= self.budget:
                self.behind = True
                return False
            return True

        by_segment = self.segment_length is not None
        # A batch of each state's jobs and runs in turn, until each has none left due: a
        # state whose jobs keep coming as fast as they go (the succeeded ones of a busy
        # queue) would otherwise spend every round's budget, and the others would wait for
        # good (and the segments of events with them, which wait for every due job).
        pending = [
            (batch, partial(prune, status=status, keep=keep, limit=batch, events=not by_segment))
            for status, keep in self.retention.keeps().items()
            for prune, batch in ((prune_jobs, JOB_BATCH), (prune_runs, RUN_BATCH))
        ]
        while pending and more():
            for item in list(pending):
                if not more():
                    break
                batch, work = item
                pruned = self._batch(work, pace)
                if pruned is None:
                    pending.remove(item)  # it waited on a lock: the next round retries it
                    continue
                done += pruned
                if not pruned.locked:
                    return self._finish(done, started, pace)
                if pruned.jobs + pruned.runs < batch:
                    pending.remove(item)
        shortest = min(self.retention.keeps().values(), default=None)
        if shortest is not None and self.segment_length is not None:
            done += self._segments(shortest, self.segment_length, pace.stop, pace)
        elif shortest is not None:
            done += self._sweep(shortest, more, pace)
        if done.rows and self.vacuum:
            began = time.monotonic()
            vacuumed = vacuum_history_if_needed(self._store)
            if vacuumed:
                _logger.info(
                    "vacuumed %s after pruning", ", ".join(f"runledger.{t}" for t in vacuumed)
                )
                pace.after(time.monotonic() - began, self._busy())
        return self._finish(done, started, pace)

    def _segments(
        self,
        keep: datetime.timedelta,
        length: datetime.timedelta,
        stop: threading.Event,
        pace: _Pace,
    ) -> Pruned:
        """Drop the segments of events that closed more than ``keep`` ago (up to
        ``SEGMENT_DROPS`` a round), then open a new one if the newest is ``length`` old.

        Both run even in a round that spent its budget: a pruner that stays behind on a
        saturated queue must still open segments, or the events of the jobs it prunes would
        pile up in one. A segment waits, though, while jobs or runs that finished before it
        closed are due and not yet pruned: they are deleted first, and its events then go
        whole."""
        events = 0
        try:
            for _ in range(SEGMENT_DROPS):
                if stop.is_set():
                    break
                drop = partial(drop_segment, keep=keep, keeps=self.retention.keeps())
                dropped = self._batch(drop, pace)
                if dropped is None or not dropped.locked or dropped.segment is None:
                    break
                if dropped.waiting:
                    break  # the jobs it describes are still due: next round
                events += dropped.events
                self._log_dropped(dropped)
            if not stop.is_set():
                opened = self._batch(partial(open_segment, older_than=length), pace)
                if opened is not None:
                    _logger.info("opened segment %d of runledger.events", opened)
        except psycopg.errors.InsufficientPrivilege as err:
            # Rather than leave every pruned job's events behind for good.
            self.segment_length = None
            _logger.warning(
                "this worker's database role may not change runledger.events (%s): from now "
                "on it deletes events row by row with their jobs, and sweeps up those it "
                "left. Run workers as the role that owns runledger.events (the one that ran "
                "the migrations) to drop them a segment at a time",
                err.diag.message_primary,
            )
        return Pruned(events=events)

    @staticmethod
    def _log_dropped(dropped: Dropped) -> None:
        if dropped.dropped:
            _logger.info(
                "dropped segment %d of runledger.events: %d events, after copying %d of jobs "
                "and runs still kept to the newest segment",
                dropped.segment, dropped.events, dropped.kept,
            )  # fmt: skip
        else:
            _logger.info(
                "cleaned segment %d of runledger.events in place: deleted %d events; most "
                "of it (%d) is of jobs and runs still kept, so it stays another keep",
                dropped.segment, dropped.events, dropped.kept,
            )  # fmt: skip

    def _sweep(self, keep: datetime.timedelta, more: Callable[[], bool], pace: _Pace) -> Pruned:
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
            sweep = partial(sweep_orphan_events, keep=keep, after=self._sweep_after)
            swept = self._batch(sweep, pace)
            if swept is None or not swept.locked:
                break
            deleted += swept.deleted
            self._sweep_after = swept.next_after
            if swept.next_after == 0:
                self._pass_ended = time.monotonic()
                break
        return Pruned(events=deleted)

    def _batch(self, work: Callable[[psycopg.Connection[Any]], T], pace: _Pace) -> T | None:
        """Run one batch in its own transaction, then pace; None if it gave up waiting on a
        lock."""
        began = time.monotonic()
        result: T | None = None
        try:
            with self._store.transaction() as conn:
                result = work(conn)
        except psycopg.errors.LockNotAvailable:
            _logger.info("a prune batch gave up waiting for a lock; the next round retries it")
        pace.after(time.monotonic() - began, self._busy())
        return result

    def _finish(self, done: Pruned, started: float, pace: _Pace) -> Pruned:
        self.total += done
        if done.rows:
            _logger.info(
                "pruned %d jobs and %d workflow runs (%d of their jobs), %d attempts and "
                "%d events in %.2f s (%.2f s of it paused while the queue had a backlog)",
                done.jobs, done.runs, done.run_jobs, done.attempts, done.events,
                time.monotonic() - started, pace.paused,
            )  # fmt: skip
        self._note_behind()
        return done

    def _note_behind(self) -> None:
        now = time.monotonic()
        if not self.behind:
            self._behind_since = self._warned_at = None
            return
        if self._behind_since is None:
            self._behind_since = now
        if now - self._behind_since >= BEHIND_WARNING and (
            self._warned_at is None or now - self._warned_at >= BEHIND_WARNING
        ):
            self._warned_at = now
            _logger.warning(
                "pruning is behind: for %d minutes every round ended with finished jobs or "
                "runs still due. While the queue has a backlog it deletes at most %.1f %% of "
                "the time (Retention(busy_share=...)); it catches up when the queue keeps up "
                "with its jobs, or with a larger share",
                (now - self._behind_since) // 60, self.retention.busy_share * 100,
            )  # fmt: skip
