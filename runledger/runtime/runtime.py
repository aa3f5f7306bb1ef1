"""``Runtime``: the worker pool, heartbeat, listener, reaper and scheduler of one process."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any

from psycopg_pool import ConnectionPool

from runledger.core.retention import Retention, format_duration
from runledger.errors import ConfigError
from runledger.postgres.channels import CANCEL as CANCEL_CHANNEL
from runledger.postgres.channels import JOBS as NOTIFY_CHANNEL
from runledger.postgres.listener import Listener
from runledger.postgres.store import Store
from runledger.runtime.config import settings_from_env
from runledger.runtime.events import EventStream
from runledger.runtime.heartbeat import Heartbeat, cancelled_event
from runledger.runtime.logs import JobLog, log_start, log_stop
from runledger.runtime.loop import Loop
from runledger.runtime.metrics import Metrics
from runledger.runtime.presence import Presence, runledger_version
from runledger.runtime.pruner import Pruner
from runledger.runtime.reaper import Reaper
from runledger.runtime.registry import Registry
from runledger.runtime.scheduler import Scheduler
from runledger.runtime.worker import WorkerPool

_logger = logging.getLogger("runledger.runtime")

FLUSH_SECONDS = 1.0
"""How long a stop gives, after its timeout for the handlers, to writing their outcomes and
joining its threads."""


def _check_seconds(**values: float) -> None:
    for name, value in values.items():
        if not 0 < value < math.inf:  # also refuses nan
            raise ConfigError(name=name, value=value, expected="a positive number of seconds")


def _queue_names(queues: Sequence[str]) -> Sequence[str]:
    """The queues given as a sequence or a comma-separated string; at least one."""
    names = (
        [q.strip() for q in queues.split(",") if q.strip()] if isinstance(queues, str) else queues
    )
    if not names:
        raise ConfigError(name="queues", value=queues, expected="at least one queue name")
    return names


def _checked_retention(retention: object) -> Retention | None:
    """The policy to prune by: None when nothing is ever pruned."""
    if retention is None:
        return None
    if not isinstance(retention, Retention):
        raise ConfigError(
            name="retention", value=retention, expected="a runledger.Retention, or None"
        )
    return retention if retention.keeps() else None


class Runtime:
    """Runs the jobs of a registry: claims, executes, retries, reaps and fires schedules.

    ``Runtime(dsn_or_pool_or_store, registry, concurrency=8, queues=["default"])``. Use it as
    a context manager (threads start on enter and are stopped and joined on exit), or call
    ``run()`` to block until SIGTERM/SIGINT. Several runtimes, in one process or many, can
    share a database: claims, reaping and cron firing are safe to run concurrently.

    Args:
        target: a DSN, a ``psycopg_pool.ConnectionPool`` or a ``Store``.
        registry: the handlers, schedules and hooks.
        concurrency: handlers running at once (one thread each).
        prefetch: claimed jobs that may wait for a free thread (default: ``concurrency``);
            0 claims only for idle threads.
        queues: the queues to claim from.
        poll_interval: seconds between polls when no NOTIFY arrives (polling always runs).
        lease_seconds: how long a claim holds without a heartbeat; renewed every third.
        listen: LISTEN for enqueue notifications; False for poll-only mode (PgBouncer in
            transaction pooling mode cannot LISTEN), which also makes no session-level
            setting on the claimer's connection (a transaction pooler would leave it behind
            for other clients; the claim then sets its plan mode per transaction).
        reap_interval: seconds between reaper rounds.
        shutdown_timeout: how long ``stop()`` waits for running handlers.
        scheduler: fire cron schedules in this runtime.
        reaper: reap expired leases in this runtime.
        worker_id: the name written as the lease owner (default host:pid:random).
        handler_context: a callable returning a context manager entered around every
            handler call, in the handler's thread (e.g. Flask's ``app.app_context``).
        prepare_threshold: psycopg's; None disables prepared statements (PgBouncer in
            transaction mode before 1.21). Ignored when ``target`` is a pool or a store.
        vacuum: let the reaper VACUUM ``runledger.jobs``, and the pruner the history tables
            it deletes from, when dead rows pile up between autovacuum's visits (one runtime
            at a time; see runledger.postgres.maintenance).
        metrics_port: serve Prometheus metrics on ``/metrics`` at this port (0 picks a free
            one, see ``metrics.port``) while started; needs the ``metrics`` extra. None (the
            default) imports nothing of it.
        retention: how long finished jobs and workflow runs are kept (default
            ``Retention()``: succeeded and cancelled 7 days, failed 30 days); this runtime
            prunes what is older every minute, one runtime at a time. None keeps everything.
            See ``runledger.core.retention``.
    """

    def __init__(
        self,
        target: str | ConnectionPool[Any] | Store,
        registry: Registry,
        *,
        concurrency: int = 8,
        prefetch: int | None = None,
        queues: Sequence[str] = ("default",),
        poll_interval: float = 1.0,
        lease_seconds: float = 30.0,
        listen: bool = True,
        reap_interval: float = 5.0,
        schedule_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        scheduler: bool = True,
        reaper: bool = True,
        worker_id: str | None = None,
        handler_context: Callable[[], AbstractContextManager[Any]] | None = None,
        prepare_threshold: int | None = 5,
        vacuum: bool = True,
        metrics_port: int | None = None,
        retention: Retention | None = Retention(),  # noqa: B008 (a frozen value)
    ) -> None:
        if concurrency < 1:
            raise ConfigError(name="concurrency", value=concurrency, expected="an integer >= 1")
        Metrics.check(metrics_port)  # before the store opens a pool
        queues = _queue_names(queues)
        _check_seconds(
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            reap_interval=reap_interval,
            schedule_interval=schedule_interval,
            shutdown_timeout=shutdown_timeout,
        )
        if isinstance(target, Store):
            self._store = target
            self._owns_store = False
        else:
            # Handlers using ctx.conn each hold a connection; the loops need a few more.
            self._store = Store(
                target,
                min_size=2,
                max_size=concurrency + 6,
                prepare_threshold=prepare_threshold,
            )
            self._owns_store = not isinstance(target, ConnectionPool)
        self.registry = registry
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.shutdown_timeout = shutdown_timeout
        # Every transition the runtime commits goes through this one stream; hooks read it.
        self.events = EventStream([registry.hooks, JobLog()])
        self._queues = tuple(queues)
        self._concurrency = concurrency
        self._prefetch = concurrency if prefetch is None else max(prefetch, 0)
        self._listen = listen
        self.pool = WorkerPool(
            self._store,
            registry,
            worker_id=self.worker_id,
            concurrency=concurrency,
            queues=queues,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            prefetch=prefetch,
            handler_context=handler_context,
            session_settings=listen,
            events=self.events,
        )
        # Metrics, when asked for, read the same stream (and import prometheus_client).
        self.metrics = Metrics.subscribed(self.events, self.pool.table, self._store, metrics_port)
        self._presence = Presence(
            self._store,
            worker_id=self.worker_id,
            queues=queues,
            handlers=registry.job_types(),
            concurrency=concurrency,
            lease_seconds=lease_seconds,
        )
        self._heartbeat = Heartbeat(
            self._store, self.pool, registry, lease_seconds=lease_seconds, presence=self._presence
        )
        loops = [*self.pool.loops(), Loop("runledger-heartbeat-0", self._heartbeat.step)]
        if reaper:
            self._reaper: Reaper | None = Reaper(
                self._store,
                registry,
                interval=reap_interval,
                on_reaped=self.pool.mark_lost,
                vacuum=vacuum,
                events=self.events,
            )
            loops.append(Loop("runledger-reaper-0", self._reaper.step))
        else:
            self._reaper = None
        self.retention = _checked_retention(retention)
        self.pruner = (
            None
            if self.retention is None
            else Pruner(self._store, self.retention, vacuum=vacuum, busy=self.pool.backlog)
        )
        if self.pruner is not None:
            loops.append(Loop("runledger-pruner-0", self.pruner.step))
        self._scheduler = Scheduler(self._store, registry, interval=schedule_interval)
        if scheduler:
            loops.append(Loop("runledger-scheduler-0", self._scheduler.step))
        self.listener: Listener | None = None
        if listen:
            self.listener = Listener(
                self._store.conninfo,
                [NOTIFY_CHANNEL, CANCEL_CHANNEL],
                self._on_notify,
                on_reconnect=self.pool.wake.set,
            )
            loops.append(Loop("runledger-listener-0", self.listener.serve))
        self._loops = loops
        if self.metrics is not None:
            self.metrics.watch(loops)
            self.metrics.watch_pruner(self.pruner)
        self._supervisor = Loop("runledger-supervisor-0", self._supervise)
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._stop_requested = threading.Event()

    @classmethod
    def from_env(
        cls,
        registry: Registry,
        target: str | ConnectionPool[Any] | Store | None = None,
        **overrides: Any,
    ) -> Runtime:
        """A runtime configured from ``RUNLEDGER_*`` environment variables.

        ``RUNLEDGER_DSN`` (or ``DATABASE_URL``) gives the database unless ``target`` does;
        keyword ``overrides`` win over the environment.

        Raises:
            ConfigError: a variable does not parse, or no database is given.
        """
        settings = settings_from_env()
        if target is None:
            if settings.dsn is None:
                raise ConfigError(
                    name="RUNLEDGER_DSN", value="", expected="a PostgreSQL DSN (or DATABASE_URL)"
                )
            target = settings.dsn
        return cls(target, registry, **{**settings.runtime_kwargs(), **overrides})

    @property
    def store(self) -> Store:
        """The store the runtime uses."""
        return self._store

    # --- service ----------------------------------------------------------------------------

    def start(self) -> None:
        """Check the schema, sync schedules, register this runtime's ``runledger.workers``
        row and start every thread (idempotent).

        Raises:
            SchemaNotMigrated: run ``runledger migrate`` first.
        """
        with self._lock:
            if self._started:
                return
            if self.metrics is not None:
                self.metrics.start()  # first: a port in use refuses the start cleanly
            try:
                # Checked before anything starts, so a refused start leaves nothing running
                # and can be retried once the schema is migrated.
                self._store.check_schema()
                self._scheduler.sync()
                self._presence.register()
            except BaseException:
                if self.metrics is not None:
                    self.metrics.stop()
                raise
            self._started = True
        self.pool.start()
        for loop in self._loops:
            loop.start()
        self._supervisor.start()
        log_start(
            version=runledger_version(), worker_id=self.worker_id, queues=self._queues,
            registry=self.registry, concurrency=self._concurrency, prefetch=self._prefetch,
            listen=self._listen, conninfo=self._store.conninfo,
        )  # fmt: skip
        if self.retention is None:
            _logger.info("retention off: this worker prunes no finished jobs or runs")
        else:
            length = self.pruner.segment_length if self.pruner is not None else None
            _logger.info(
                "retention: keeps finished jobs and workflow runs %s; older ones are pruned "
                "every %g s; %s",
                self.retention.describe(),
                self.pruner.interval if self.pruner is not None else 0,
                "their events with them"
                if length is None
                else f"their events with their segment, a new one every {format_duration(length)}",
            )

    def stop(self, timeout: float | None = None) -> None:
        """Shut down gracefully; idempotent. Blocks up to ``timeout`` + ``FLUSH_SECONDS``
        seconds: one deadline shared by every stage below.

        Stops claiming, waits for running handlers up to ``timeout`` (default
        ``shutdown_timeout``), hands back claimed jobs that never started without counting
        the attempt, expires the leases of handlers still running (so any runtime's reaper
        retries them at once and their late results are discarded), writes pending outcomes,
        joins every thread it started, except handler threads stuck in user code, and then
        deletes this runtime's ``runledger.workers`` row (best effort).
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if not self._started:
                if self.metrics is not None:
                    self.metrics.stop()
                if self._owns_store:
                    self._store.close()
                return
        timeout = self.shutdown_timeout if timeout is None else timeout
        # One deadline for every stage: the handlers have ``timeout``, then writing what
        # they left and joining the threads share FLUSH_SECONDS more.
        drained_by = time.monotonic() + timeout
        deadline = drained_by + FLUSH_SECONDS

        def left() -> float:
            return max(deadline - time.monotonic(), 0.01)

        # Each stage runs whatever the one before it raised (the database may be away), so
        # every thread is stopped and joined.
        self._supervisor.signal_stop()
        try:
            still_running = self.pool.drain(max(drained_by - time.monotonic(), 0.0))
            if still_running:
                _logger.warning("%d handlers still running at shutdown", len(still_running))
                self.pool.expire_running(still_running, timeout=left())
        except Exception:
            _logger.exception("error while draining the worker pool")
        try:
            self.pool.stop(timeout=left())
        except Exception:
            _logger.exception("error while stopping the worker pool")
        for loop in self._loops:
            loop.signal_stop()  # all at once: their joins overlap
        for loop in [*self._loops, self._supervisor]:
            loop.stop(left())
        try:
            self._presence.withdraw(timeout=left())
        except Exception:
            # Best effort: a row left behind shows as stale and a reaper deletes it later.
            _logger.exception("could not delete the workers row of %s", self.worker_id)
        if self.metrics is not None:
            try:
                self.metrics.stop(timeout=left())
            except Exception:
                _logger.exception("error while stopping the metrics server")
        if self._owns_store:
            self._store.close()
        log_stop(
            self.worker_id,
            drained=self.pool.drained,
            released=self.pool.released,
            abandoned=self.pool.abandoned,
        )

    def __enter__(self) -> Runtime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> None:
        """Start, block until SIGTERM or SIGINT (or ``request_stop()``), then ``stop()``.

        Installs signal handlers when called from the main thread.
        """
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
            while not self._stop_requested.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def request_stop(self) -> None:
        """Make ``run()`` return (after a graceful stop). Thread-safe."""
        self._stop_requested.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        _logger.info("signal %d: shutting down", signum)
        self._stop_requested.set()

    # --- internals --------------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == NOTIFY_CHANNEL:
            if self.pool.wants_queue(payload):
                self.pool.wake.set()
        elif channel == CANCEL_CHANNEL:
            try:
                job_id = uuid.UUID(payload)
            except ValueError:
                return
            events = []
            for flight in self.pool.of_job(job_id):
                if self.pool.mark_lost(flight.job.lease_token) is not None:
                    events.append(cancelled_event(flight))
            self.events.emit(events)

    def _supervise(self, stop: threading.Event) -> None:
        for loop in self._loops:
            loop.ensure_running()
        stop.wait(1.0)

    def loops(self) -> tuple[Loop, ...]:
        """The supervised loops (for tests and diagnostics)."""
        return tuple(self._loops)

    def reap_now(self) -> int:
        """Run one reaper round now; return how many jobs it took."""
        reaper = self._reaper or Reaper(self._store, self.registry, interval=0)
        return reaper.reap_once()
