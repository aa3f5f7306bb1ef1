"""``JobContext``: what a handler gets besides its payload."""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from runledger.core.payload import JsonValue
from runledger.core.progress import progress_json
from runledger.postgres import liveness

_logger = logging.getLogger("runledger.job")


class JobContext:
    """The running attempt of a job, as its handler sees it.

    Attributes:
        job_id, job_type, attempt, max_attempts, queue, priority: the job and this attempt
            (``attempt`` counts from 1; attempts that were released or snoozed are not
            counted, so the run after a ``Snooze`` sees the same ``attempt``).
        workflow_run_id, step_key: the workflow step this job runs, or None.
        workflow_input: the run's input (None outside workflows).
        upstream: the outputs of the step's prerequisites, by step key.
        scheduled_at: the cron tick a scheduled job stands for (None for other jobs).
        cancelled: set when the job is cancelled, times out or loses its lease. Long handlers
            should check it (``ctx.cancelled.is_set()`` or ``ctx.cancelled.wait(seconds)``)
            and return early: Python threads cannot be killed, and whatever a handler returns
            after losing its lease is discarded.
        logger: a logger whose records carry the job id, type, queue, attempt, run id and
            step key (``runledger.runtime.logs.JOB_FIELDS``; the JSON log format writes them).

    One context per attempt; only the handler's thread should use ``conn``.
    """

    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        job_type: str,
        attempt: int,
        max_attempts: int,
        queue: str,
        priority: int,
        workflow_run_id: uuid.UUID | None,
        step_key: str | None,
        workflow_input: JsonValue,
        upstream: Mapping[str, JsonValue],
        scheduled_at: datetime.datetime | None,
        pool: ConnectionPool[Any],
        heartbeat: Callable[[], bool],
        report_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.queue = queue
        self.priority = priority
        self.workflow_run_id = workflow_run_id
        self.step_key = step_key
        self.workflow_input = workflow_input
        self.upstream: Mapping[str, JsonValue] = dict(upstream)
        self.scheduled_at = scheduled_at
        self.cancelled = threading.Event()
        self.logger = logging.LoggerAdapter(
            _logger,
            {
                "job_id": str(job_id),
                "job_type": job_type,
                "queue": queue,
                "attempt": attempt,
                "run_id": None if workflow_run_id is None else str(workflow_run_id),
                "step_key": step_key,
            },
        )
        self._pool = pool
        self._heartbeat = heartbeat
        self._report_progress = report_progress
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """A connection inside a transaction that commits with this job's success record.

        Taken from the runtime's pool on first use. What the handler writes here commits only
        if the job's success is recorded in the same transaction, which happens only while
        this attempt still holds its lease; otherwise (failure, timeout, cancel, lost lease)
        it is rolled back. ``Snooze`` is not a failure: what the handler wrote before raising
        it commits with the snooze, in the same way. Do not commit or roll it back yourself.
        """
        if self._conn is None:
            self._conn = liveness.take(self._pool)
        return self._conn

    @property
    def used_conn(self) -> bool:
        """True if the handler took ``conn``."""
        return self._conn is not None

    def take_conn(self) -> psycopg.Connection[Any] | None:
        """Hand the connection over to the runtime (which commits or rolls back and returns it)."""
        conn, self._conn = self._conn, None
        return conn

    def progress(self, value: JsonValue, note: str | None = None) -> None:
        """Record how far the job has got, for ``get_job``, the CLI and the admin to show.

        ``value`` is either a number, the fraction done from 0 to 1 (``ctx.progress(0.4,
        note="page 4 of 10")``), or any other JSON value, stored as given
        (``ctx.progress({"pages": 4, "of": 10})``); the stored shape is described in
        ``runledger.core.progress``. Cheap enough to call in a tight loop: it only keeps the
        latest value in memory. The heartbeat writes it with its next lease renewal (every
        ``lease_seconds / 3``), and the attempt's outcome writes the last one, so reports in
        between coalesce and only the latest is kept. The stored value stays after the job
        ends, and until another attempt reports. Does not block; thread-safe.

        Raises:
            InvalidProgress: a fraction outside [0, 1], a ``note`` that is not a string, a
                value that is not plain JSON, or more than ``MAX_PROGRESS_BYTES`` of it.
        """
        text = progress_json(
            value, note=note, attempt=self.attempt, at=datetime.datetime.now(datetime.UTC)
        )
        if self._report_progress is not None:
            self._report_progress(text)

    def heartbeat(self) -> bool:
        """Renew this job's lease now; return False (and set ``cancelled``) if it was lost.

        The runtime renews leases by itself; call this only around a long blocking call that
        may outlast the lease. Blocks for one round trip.
        """
        held = self._heartbeat()
        if not held:
            self.cancelled.set()
        return held
