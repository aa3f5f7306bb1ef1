"""The scheduler: syncs the registry's cron schedules and fires due ticks."""

from __future__ import annotations

import logging
import threading

import attrs

from runledger.core.schedule import ScheduleSpec
from runledger.postgres.schedules import Unfireable, fire_due, sync_schedules
from runledger.postgres.store import Store
from runledger.runtime.registry import Registry

_logger = logging.getLogger("runledger.scheduler")


class Scheduler:
    """Fires due schedules every ``interval`` seconds; safe to run in many runtimes."""

    def __init__(self, store: Store, registry: Registry, *, interval: float = 1.0) -> None:
        self._store = store
        self._registry = registry
        self.interval = interval
        # Stored rows that cannot fire, logged once and then left out of the due query; only
        # this loop's thread touches the set. A row changed in the database is a new row.
        self._unfireable: set[Unfireable] = set()

    def sync(self) -> None:
        """Write the registry's schedules to the database (one transaction), and delete the
        ones of its job types it declared before but no longer does (see ``sync_schedules``).
        """
        specs = [self._with_handler_queue(spec) for spec in self._registry.schedules()]
        with self._store.transaction() as conn:
            removed = sync_schedules(conn, specs, job_types=self._registry.job_types())
        for name in removed:
            _logger.info(
                "deleted schedule %s: the registry no longer declares it (its jobs stay)", name
            )

    def _with_handler_queue(self, spec: ScheduleSpec) -> ScheduleSpec:
        """A schedule without a queue uses its handler's, as ``enqueue(registry=)`` does."""
        defaults = self._registry.handler_defaults(spec.job_type)
        if spec.queue is None and defaults is not None and defaults.queue is not None:
            return attrs.evolve(spec, queue=defaults.queue)
        return spec

    def step(self, stop: threading.Event) -> None:
        """Fire what is due, then wait ``interval``.

        A stored schedule that cannot compute its ticks (a row written by hand or by an older
        version, such as one for February 30th) is logged at ERROR once and skipped; the
        others keep firing.
        """
        with self._store.transaction() as conn:
            fired = fire_due(conn, skip=self._unfireable, on_unfireable=self._skip)
        for tick in fired:
            _logger.info("schedule %s fired for %s: job %s", tick.name, tick.tick, tick.job_id)
        stop.wait(self.interval)

    def _skip(self, row: Unfireable) -> None:
        self._unfireable.add(row)
        _logger.error(
            "schedule %r (cron %r, timezone %r) cannot fire and is skipped: %s; "
            "fix it with upsert_schedule, or pause or delete it",
            row.name, row.cron, row.timezone, row.error,
        )  # fmt: skip
