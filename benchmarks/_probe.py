"""Per-window evidence beside a throughput figure: what finding the next jobs costs, and
how much CPU the machine had.

A window can be slower than the first for different reasons. The claim itself can get
dearer: dead entries pile up at the head of ``jobs_runnable`` and every claim steps over
them (the pages they fill, and a heap visit for each entry not yet known dead), which is what
vacuuming the jobs table is for. That shows in the buffers a read-only copy of the claim's
scan touches to find the next ``limit`` due jobs (``EXPLAIN (ANALYZE, BUFFERS)``). Or the
machine can give less: on a virtual machine the hypervisor lends the cores to other guests
(steal time, the eighth figure of the ``cpu`` line in ``/proc/stat``), and everything on it
slows down at once; a machine with no idle CPU left slows down for anything else it runs;
and every transaction of the runtime waits for its commit to reach the disk, whose speed
varies on a shared machine, so the probe also times a transaction of its own that takes a
transaction id and commits (the same WAL flush, without touching the ledger). And the server
can be checkpointing: a checkpoint begins when ``max_wal_size`` worth of WAL has been written
since the last one (or ``checkpoint_timeout`` has passed), writes out every dirty buffer, and
after it the first change to each page writes the whole page to the WAL again (a full-page
image); a busy queue writes a couple of kB of WAL per job, so at thousands of jobs a second
a checkpoint can begin within a minute's figure and slow the windows after it. The probe
counts checkpoints begun and the WAL written (with its full-page images), where the server
has the statistics views for it (PostgreSQL 14 and later). Last, the machine's cores can
get slower without any steal time to show for it (a host's other guests on the same physical
cores, or this guest's two vCPUs being hyperthreads of one core): the probe times a fixed
pure-Python loop in CPU time (its own thread's, so waiting for the GIL does not count), which
takes longer on a slower core.

A ``Probe`` samples all of these on its own connection every half second while a figure runs; each
interval between two samples counts towards the window that holds its middle, and each scan
towards the window it ran in. (Counting index entries read instead, from
``pg_stat_user_indexes``, would miss the decay: entries already marked dead are skipped
without being counted, but their pages are still read.)
"""

from __future__ import annotations

import datetime
import itertools
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg

WRITE = "select pg_current_xact_id()"
# The server's clock, the tables being vacuumed now (by autovacuum or a runtime's reaper),
# and the checkpoints begun (timed or requested), full-page images and bytes written to the
# WAL so far: {wal} is one of the WAL_* rows below, by server version.
SERVER_STATE = """
select clock_timestamp(),
       coalesce((select array_agg(distinct c.relname order by c.relname)
                 from pg_stat_progress_vacuum as v
                 join pg_class as c on c.oid = v.relid
                 where v.datname = current_database()), '{{}}'),
       w.checkpoints, w.full_pages, w.wal_bytes
from ({wal}) as w(checkpoints, full_pages, wal_bytes)
"""
# The claim's candidate scan (runledger.postgres.attempts.CLAIM_PLAIN) without its row locks.
HEAD_SCAN = """
explain (analyze, buffers, costs off, timing off, format json)
select j.id
from runledger.jobs as j
where j.status = 'queued' and j.queue = %(queue)s and j.run_at <= now()
order by j.priority desc, j.run_at, j.id
limit %(limit)s
"""
WAL_17 = """
select (select num_timed + num_requested from pg_stat_checkpointer), wal_fpi, wal_bytes
from pg_stat_wal
"""
WAL_14 = """
select (select checkpoints_timed + checkpoints_req from pg_stat_bgwriter), wal_fpi, wal_bytes
from pg_stat_wal
"""
WAL_NONE = "select null::bigint, null::bigint, null::numeric"  # no pg_stat_wal before 14


def server_state_query(version: int) -> str:
    """``SERVER_STATE`` for a server of ``version`` (``server_version_num``)."""
    wal = WAL_17 if version >= 170000 else WAL_14 if version >= 140000 else WAL_NONE
    return SERVER_STATE.format(wal=wal)


FIXED_LOOP = 50_000
"""Iterations of the probe's fixed loop: a few milliseconds of CPU every half second."""
PROC_STAT = Path("/proc/stat")
IDLE, STEAL = 3, 7
"""Indexes of idle and steal time among the ``cpu`` line's figures (user, nice, system,
idle, iowait, irq, softirq, steal, ...)."""


def cpu_times() -> tuple[int, ...] | None:
    """The machine's ``cpu`` line of ``/proc/stat``, or None where there is none."""
    try:
        with PROC_STAT.open() as file:
            fields = file.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) <= STEAL + 1:
        return None
    return tuple(int(x) for x in fields[1:])


def fixed_work_ms() -> float:
    """The CPU time, in ms, of this thread running a fixed loop: more on a slower core."""
    began = time.thread_time()
    total = 0
    for i in range(FIXED_LOOP):
        total += i * i
    return (time.thread_time() - began) * 1000


@attrs.frozen
class Sample:
    """Counters at one moment of the server's clock."""

    at: datetime.datetime
    head_buffers: int
    commit_ms: float
    cpu: tuple[int, ...] | None
    process_cpu: float
    """CPU seconds this process has used so far (all its threads)."""
    vacuuming: tuple[str, ...]
    """Tables of the database being vacuumed when the sample was taken."""
    work_ms: float | None = None
    """CPU ms of the probe's fixed loop (``fixed_work_ms``)."""
    wal: tuple[int, int, int] | None = None
    """Checkpoints begun, full-page images and WAL bytes so far, server-wide (None before
    PostgreSQL 14)."""


@attrs.frozen(kw_only=True)
class Evidence:
    """Per window: the mean buffers the head scan touched and the median time of the
    probe's committed write (None for a window without a sample), and the shares of the
    machine's CPU time that were idle and that the hypervisor stole (None where the machine
    does not say)."""

    head_buffers: tuple[float | None, ...]
    commit_ms: tuple[float | None, ...]
    process_cpu: tuple[float, ...]
    """This process's CPU seconds per window (the runtime's, when it runs in-process)."""
    vacuuming: tuple[tuple[str, ...], ...]
    """Per window, the tables seen being vacuumed (by autovacuum or a runtime)."""
    idle: tuple[float | None, ...]
    steal: tuple[float | None, ...]
    checkpoints: tuple[int | None, ...] = ()
    """Checkpoints begun in each window (None where the server does not say)."""
    wal_mb: tuple[float | None, ...] = ()
    """MB of WAL written in each window, the whole server's."""
    full_pages: tuple[int | None, ...] = ()
    """Full-page images among that WAL."""
    work_ms: tuple[float | None, ...] = ()
    """The mean CPU ms of the probe's fixed loop in each window: the machine's speed."""

    def checkpoint_windows(self) -> tuple[int, ...]:
        """The windows (counted from 1) in which a checkpoint began."""
        return tuple(i + 1 for i, n in enumerate(self.checkpoints) if n)


def per_window(
    samples: Sequence[Sample],
    t0: datetime.datetime,
    window: float,
    count: int,
    *,
    longest: float = 1.5,
) -> Evidence:
    """The samples' figures for ``count`` windows of ``window`` seconds after ``t0``.

    An interval much longer than the probe's own (the workers' shutdown, when backends
    report what they still held) is left out rather than spread over one window.
    """
    scans: list[list[int]] = [[] for _ in range(count)]
    commits: list[list[float]] = [[] for _ in range(count)]
    vacuums: list[set[str]] = [set() for _ in range(count)]
    work: list[list[float]] = [[] for _ in range(count)]
    for sample in samples:
        index = int((sample.at - t0).total_seconds() // window)
        if 0 <= index < count:
            if sample.work_ms is not None:
                work[index].append(sample.work_ms)
            scans[index].append(sample.head_buffers)
            commits[index].append(sample.commit_ms)
            vacuums[index].update(sample.vacuuming)
    cpu: list[list[int]] = [[] for _ in range(count)]
    wal: list[list[int] | None] = [None] * count
    process = [0.0] * count
    for before, after in itertools.pairwise(samples):
        if (after.at - before.at).total_seconds() > longest:
            continue
        middle = before.at + (after.at - before.at) / 2
        index = int((middle - t0).total_seconds() // window)
        if not 0 <= index < count:
            continue
        process[index] += after.process_cpu - before.process_cpu
        if before.wal is not None and after.wal is not None:
            grown = [a - b for a, b in zip(after.wal, before.wal, strict=True)]
            summed = wal[index]
            wal[index] = (
                grown if summed is None else [a + b for a, b in zip(summed, grown, strict=True)]
            )
        if before.cpu is not None and after.cpu is not None:
            delta = [a - b for a, b in zip(after.cpu, before.cpu, strict=False)]
            if cpu[index]:
                delta = [a + b for a, b in zip(cpu[index], delta, strict=False)]
            cpu[index] = delta
    return Evidence(
        head_buffers=tuple(sum(b) / len(b) if b else None for b in scans),
        commit_ms=tuple(statistics.median(c) if c else None for c in commits),
        process_cpu=tuple(process),
        vacuuming=tuple(tuple(sorted(v)) for v in vacuums),
        idle=tuple(c[IDLE] / sum(c) if c and sum(c) else None for c in cpu),
        steal=tuple(c[STEAL] / sum(c) if c and sum(c) else None for c in cpu),
        checkpoints=tuple(None if w is None else w[0] for w in wal),
        wal_mb=tuple(None if w is None else w[2] / 1e6 for w in wal),
        full_pages=tuple(None if w is None else w[1] for w in wal),
        work_ms=tuple(statistics.fmean(w) if w else None for w in work),
    )


class Probe:
    """Takes a ``Sample`` every ``interval`` seconds on its own connection while in its
    ``with`` block: the head scan of ``queue`` for ``limit`` jobs, a committed write, the
    tables being vacuumed, the server's checkpoints and WAL, the machine's and this
    process's CPU times, and the CPU time of a fixed loop."""

    def __init__(self, dsn: str, *, queue: str, limit: int, interval: float = 0.5) -> None:
        self._dsn = dsn
        self._params = {"queue": queue, "limit": limit}
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[Sample] = []
        self._thread = threading.Thread(target=self._run, name="bench-probe", daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            state = server_state_query(conn.info.server_version)
            self._take(conn, state)
            while not self._stop.wait(self._interval):
                self._take(conn, state)
            self._take(conn, state)  # the end of the last window

    def _take(self, conn: psycopg.Connection[Any], state: str) -> None:
        plan = conn.execute(HEAD_SCAN, self._params).fetchone()
        now = conn.execute(state).fetchone()
        assert plan is not None and now is not None
        counters = now[2:5]
        wal = None if None in counters else (int(counters[0]), int(counters[1]), int(counters[2]))
        top = plan[0][0]["Plan"]
        buffers = int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
        began = time.perf_counter()
        with conn.transaction():
            conn.execute(WRITE)
        commit_ms = (time.perf_counter() - began) * 1000
        self.samples.append(
            Sample(
                now[0],
                buffers,
                commit_ms,
                cpu_times(),
                time.process_time(),
                tuple(now[1]),
                work_ms=fixed_work_ms(),
                wal=wal,
            )
        )
