"""A runtime's presence: its ``runledger.workers`` row, registered at start, refreshed by the
heartbeat and withdrawn at a clean stop (see ``runledger.postgres.workers``)."""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Sequence

from runledger.postgres.store import Store
from runledger.postgres.workers import (
    WorkerInfo,
    delete_worker,
    oldest_live_worker,
    register_worker,
    touch_worker_ranked,
)

_logger = logging.getLogger("runledger.runtime")


def runledger_version() -> str:
    """The version of runledger this process runs, or ``"unknown"``.

    Read from ``runledger.__version__``, which a test keeps equal to the installed
    distribution's version whatever the distribution is named.
    """
    try:
        from runledger import __version__
    except ImportError:  # pragma: no cover - runledger's own package always has it
        return "unknown"
    return __version__


class Presence:
    """Keeps one runtime's ``runledger.workers`` row. Each call is one short transaction of
    its own; ``touch`` is thread-safe, ``register`` and ``withdraw`` run at start and stop."""

    def __init__(
        self,
        store: Store,
        *,
        worker_id: str,
        queues: Sequence[str],
        handlers: Sequence[str],
        concurrency: int,
        lease_seconds: float,
    ) -> None:
        self._store = store
        self.worker_id = worker_id
        self._queues = tuple(queues)
        self._handlers = tuple(handlers)
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._started_at: datetime.datetime | None = None

    def info(self) -> WorkerInfo:
        """The row's contents: host and pid are read now (a forked child is its own worker)."""
        return WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=runledger_version(),
            queues=self._queues,
            handlers=self._handlers,
            concurrency=self._concurrency,
            lease_seconds=self._lease_seconds,
        )

    def register(self) -> None:
        """Insert the row, seen now (replacing a row of the same worker id)."""
        with self._store.transaction() as conn:
            self._started_at = register_worker(conn, self.info(), started_at=self._started_at)

    def touch(self) -> bool:
        """Mark the row seen now; put it back if a reaper deleted it (the database was away
        longer than ``GONE_AFTER_LEASES`` leases, or someone deleted it by hand). Return
        whether the row is the oldest live one (this runtime then reads the queue depth for
        metrics). One transaction, one statement unless the row was gone.

        Raises:
            psycopg.Error, psycopg_pool.PoolTimeout: the database could not be reached or
                refused (the heartbeat logs it and carries on).
        """
        with self._store.transaction() as conn:
            found, oldest = touch_worker_ranked(conn, self.worker_id)
            if found:
                return oldest
            self._started_at = register_worker(conn, self.info(), started_at=self._started_at)
            oldest = oldest_live_worker(conn) == self.worker_id
        _logger.warning("worker %s: its workers row was gone; registered it again", self.worker_id)
        return oldest

    def withdraw(self, timeout: float | None = None) -> None:
        """Delete the row (at a clean stop), waiting up to ``timeout`` for a connection."""
        with self._store.transaction(timeout) as conn:
            delete_worker(conn, self.worker_id)
