"""Prometheus metrics of one runtime, served on ``/metrics`` (the ``metrics`` extra).

``Metrics`` is a subscriber of the runtime's ``EventStream``: it counts job outcomes and times
handlers from the events, and counts lost leases from the stream's notices. The in-flight
gauges are read from the worker pool's table, and the queue depth from the database, only when
Prometheus scrapes: no cost per job beyond a counter and a histogram update. The queue depth
is read by one runtime of a database at a time, the one whose ``runledger.workers`` row is the
oldest live one (its heartbeat says so, ``WorkerSeen``); the others export no depth series.
Each runtime has a registry of its own, so several runtimes in one process (tests) do not
clash; several worker processes on one host each serve their own port.
``prometheus_client`` is imported only here, when a runtime is asked for metrics.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg

from runledger.core.status import EventKind
from runledger.errors import ConfigError, DatabaseError, MissingExtra
from runledger.postgres.overview import queue_status
from runledger.postgres.store import Store
from runledger.runtime.events import EventStream, LostLease, WorkerSeen
from runledger.runtime.hooks import LifecycleEvent
from runledger.runtime.inflight import InFlightTable
from runledger.runtime.loop import Loop

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from runledger.runtime.pruner import Pruner

_logger = logging.getLogger("runledger.metrics")

DEPTH_INTERVAL = 15.0
"""Seconds between two reads of the queue depth from the database, however often scraped."""

OUTCOMES = {
    EventKind.JOB_SUCCEEDED: "succeeded",
    EventKind.JOB_RETRYING: "retrying",
    EventKind.JOB_SNOOZED: "snoozed",
    EventKind.JOB_FAILED: "failed",
    EventKind.JOB_CANCELLED: "cancelled",
}
"""The ``outcome`` label of ``runledger_jobs_total`` by event kind."""


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as err:
        raise MissingExtra(extra="metrics", package="prometheus-client") from err
    return prometheus_client


class _ScrapeCollector:
    """The gauges read when Prometheus scrapes: attempts held by this runtime, and, while it
    is the runtime that reads them (``reads_depth``), the jobs queued and running per queue
    (from the database, at most once every ``interval``)."""

    def __init__(self, table: InFlightTable, store: Store, interval: float) -> None:
        self._table = table
        self._store = store
        self._interval = interval
        self._lock = threading.Lock()  # one scrape at a time reads the database
        self._read_at: float | None = None
        self._depth: list[tuple[Any, ...]] = []
        self._reads_depth = False
        self.pruner: Pruner | None = None

    def reads_depth(self, reads: bool) -> None:
        """Read (and export) the queue depth from now on, or stop and drop its series."""
        with self._lock:
            if reads and not self._reads_depth:
                self._read_at = None  # read afresh at the next scrape, not the old numbers
            if not reads:
                self._depth = []
            self._reads_depth = reads

    def describe(self) -> list[Metric]:
        return []  # generated at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._table.lock:
            flights = list(self._table.by_token.values())
        running = sum(1 for f in flights if f.started and not f.done)
        prefetched = sum(1 for f in flights if not f.started)
        yield GaugeMetricFamily(
            "runledger_jobs_running", "Handlers of this runtime running now.", value=running
        )
        yield GaugeMetricFamily(
            "runledger_jobs_prefetched",
            "Jobs this runtime claimed that wait for a free thread.",
            value=prefetched,
        )
        if self.pruner is not None:
            total = self.pruner.total
            pruned = CounterMetricFamily(
                "runledger_pruned",
                "Rows this runtime's pruner deleted, by kind: standalone jobs, workflow runs, "
                "the runs' jobs, attempts and events.",
                labels=["kind"],
            )
            for kind, rows_deleted in (
                ("jobs", total.jobs),
                ("workflow_runs", total.runs),
                ("workflow_run_jobs", total.run_jobs),
                ("attempts", total.attempts),
                ("events", total.events),
            ):
                pruned.add_metric([kind], float(rows_deleted))
            yield pruned
            yield GaugeMetricFamily(
                "runledger_pruner_behind_seconds",
                "Seconds this runtime's pruner has ended every round with jobs or runs still "
                "due (0 when caught up).",
                value=self.pruner.behind_seconds,
            )
        rows = self._queue_depth()
        if rows is None:
            return  # another runtime reads the depth: summing across workers counts it once
        depth = GaugeMetricFamily(
            "runledger_queue_jobs",
            "Jobs queued and running in the database, by queue and status.",
            labels=["queue", "status"],
        )
        oldest = GaugeMetricFamily(
            "runledger_queue_oldest_due_seconds",
            "How long the oldest due queued job of each queue has waited.",
            labels=["queue"],
        )
        for queue, status, jobs, oldest_due, _types in rows:
            if status in ("queued", "running"):
                depth.add_metric([queue, str(status)], float(jobs))
            if status == "queued":
                oldest.add_metric([queue], float(oldest_due or 0.0))
        yield depth
        yield oldest

    def _queue_depth(self) -> list[tuple[Any, ...]] | None:
        with self._lock:
            if not self._reads_depth:
                return None
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self._interval:
                self._read_at = now  # a failed read is not retried before the interval
                try:
                    with self._store.pool.connection() as conn:
                        self._depth = queue_status(conn)
                except Exception:
                    _logger.exception("could not read the queue depth for /metrics")
            return self._depth


class Metrics:
    """A runtime's Prometheus metrics and the HTTP server that serves them.

    Call it with each batch of the ``EventStream`` (subscribe it); ``start()`` serves
    ``/metrics`` on ``port`` (0 picks a free one) in a daemon thread and ``stop()`` shuts
    that server down.

    Raises:
        MissingExtra: ``prometheus-client`` is not installed (``pip install
            'runledger-pg[metrics]'``).
    """

    def __init__(
        self,
        table: InFlightTable,
        store: Store,
        *,
        port: int,
        addr: str = "0.0.0.0",
        depth_interval: float = DEPTH_INTERVAL,
    ) -> None:
        client = self.check(port)
        self._port = port
        self._addr = addr
        self.registry = client.CollectorRegistry()
        self._jobs = client.Counter(
            "runledger_jobs_total",
            "Job outcomes written by this runtime (and its reaper), by queue, type and outcome.",
            ["queue", "job_type", "outcome"],
            registry=self.registry,
        )
        self._duration = client.Histogram(
            "runledger_job_duration_seconds",
            "Seconds the handlers of this runtime ran, by queue and type.",
            ["queue", "job_type"],
            registry=self.registry,
        )
        self._expired = client.Counter(
            "runledger_leases_expired_total",
            "Expired leases this runtime's reaper took back, of any worker (a worker stopped "
            "renewing), by queue and type.",
            ["queue", "job_type"],
            registry=self.registry,
        )
        self._lost = client.Counter(
            "runledger_lost_leases_total",
            "Attempts of this runtime whose lease was taken before their outcome was written "
            "(found by its heartbeat or its reaper, each once), by queue and type.",
            ["queue", "job_type"],
            registry=self.registry,
        )
        self._queue_wait = client.Histogram(
            "runledger_job_queue_wait_seconds",
            "Seconds from when a job was due (enqueued, or its run_at) to its claim by this "
            "runtime, by queue and type.",
            ["queue", "job_type"],
            registry=self.registry,
        )
        self._db_errors = client.Counter(
            "runledger_database_errors_total",
            "Database errors this runtime's loops met (each is retried), by loop.",
            ["loop"],
            registry=self.registry,
        )
        self._scrape = _ScrapeCollector(table, store, depth_interval)
        self.registry.register(self._scrape)
        self._client = client
        # The labelled children by label values; emit runs in several threads, and two that
        # race here get the same child from labels().
        self._counters: dict[tuple[str, ...], Any] = {}
        self._histograms: dict[tuple[str, ...], Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def check(port: int | None) -> Any:
        """Refuse a bad ``port`` or a missing extra before anything is built; the client
        module (None when ``port`` is None: nothing imported).

        Raises:
            ConfigError: ``port`` is not from 0 to 65535.
            MissingExtra: ``prometheus-client`` is not installed.
        """
        if port is None:
            return None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(name="metrics_port", value=port, expected="a port from 0 to 65535")
        return _client()

    @classmethod
    def subscribed(
        cls, events: EventStream, table: InFlightTable, store: Store, port: int | None
    ) -> Metrics | None:
        """The metrics of a runtime, subscribed to its ``events``; None when ``port`` is."""
        if port is None:
            return None
        metrics = cls(table, store, port=port)
        events.subscribe(metrics)
        return metrics

    def wants(self, kind: EventKind) -> bool:
        """True for what the metrics count: starts (their queue wait) and job outcomes."""
        return kind is EventKind.JOB_STARTED or kind in OUTCOMES

    def __call__(self, events: list[LifecycleEvent]) -> None:
        for event in events:
            if event.kind is EventKind.JOB_STARTED and event.queue_wait is not None:
                self._queue_wait.labels(event.queue or "", event.job_type or "").observe(
                    event.queue_wait
                )
                continue
            outcome = OUTCOMES.get(event.kind)
            if outcome is None:
                continue
            queue = event.queue or ""
            job_type = event.job_type or ""
            key = (queue, job_type, outcome)
            counter = self._counters.get(key)
            if counter is None:  # labels() takes a lock and checks its arguments: once
                counter = self._counters[key] = self._jobs.labels(*key)
            counter.inc()
            if event.duration is not None:
                histogram = self._histograms.get(key[:2])
                if histogram is None:
                    histogram = self._histograms[key[:2]] = self._duration.labels(*key[:2])
                histogram.observe(event.duration)

    def lost_leases(self, leases: list[LostLease]) -> None:
        """Count lost leases (the ``EventStream``'s notices): this runtime's own attempts in
        ``runledger_lost_leases_total``, its reaper's in ``runledger_leases_expired_total``."""
        for lost in leases:
            labels = (lost.queue or "", lost.job_type)
            if lost.mine:
                self._lost.labels(*labels).inc()
            if lost.found_by == "reaper":
                self._expired.labels(*labels).inc()

    def worker_seen(self, seen: WorkerSeen) -> None:
        """Read and export the queue depth while this runtime's workers row is the oldest
        live one; drop the depth series otherwise (the heartbeat's ``WorkerSeen``)."""
        self._scrape.reads_depth(seen.oldest)

    def database_error(self, loop: str, err: BaseException) -> None:
        """Count ``err`` if it came from the database (a loop's ``on_error``)."""
        if isinstance(err, (psycopg.Error, DatabaseError, OSError)):
            self._db_errors.labels(loop).inc()

    def watch_pruner(self, pruner: Pruner | None) -> None:
        """Export what ``pruner`` deleted and how long it has been behind (nothing for
        None: retention off)."""
        self._scrape.pruner = pruner

    def watch(self, loops: Iterable[Loop]) -> None:
        """Count the database errors of ``loops``."""
        for loop in loops:
            loop.on_error = functools.partial(self.database_error, loop.name)

    @property
    def port(self) -> int | None:
        """The port ``/metrics`` is served on (the one chosen when started with 0)."""
        return None if self._server is None else int(self._server.server_port)

    def start(self) -> None:
        """Serve ``/metrics``; idempotent.

        Raises:
            ConfigError: the port is taken (or may not be bound).
        """
        if self._server is not None:
            return
        try:
            self._server, self._thread = self._client.start_http_server(
                self._port, addr=self._addr, registry=self.registry
            )
        except OSError as err:
            raise ConfigError(
                name="metrics_port",
                value=self._port,
                expected=f"a port free to listen on ({err.strerror or err})",
            ) from err
        if self._thread is not None:
            self._thread.name = "runledger-metrics-0"

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
