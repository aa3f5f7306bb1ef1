"""A kept history of finished jobs against none, retention on against off, and two checkouts,
in turns, in one run (issue 16, sections 3 and 4).

Each figure queues no-op jobs (one ``INSERT ... SELECT``: the rows and ``job.enqueued`` events
``enqueue_many`` writes), settles the tables, and runs them with one in-process
``Runtime(concurrency=16, prefetch=64)``; it counts what the server did meanwhile, per job:
shared buffers the database touched (hit or read), rows written to ``runledger`` tables
(inserted, updated or deleted), commits and WAL bytes (the whole server's: on a shared server
other databases' writes add to it). The figures:

- ``empty`` and ``kept``: ``--jobs`` queued jobs drained with retention off
  (``retention=None``), beside an empty history and beside ``--history`` finished jobs kept.
  Before the drain one claim of 64 is EXPLAINed the way the claimer runs it (its buffers and
  milliseconds); after it, one VACUUM of the hot table is timed, the one the runtime's reaper
  runs (``vacuum (index_cleanup on) only runledger.jobs``; without ``only`` before
  PostgreSQL 18, where a VACUUM of a parent leaves its inheritance children alone), with the
  index pages it scanned.
- ``retention-on`` and ``retention-off``: ``--retention-jobs`` queued jobs run beside an empty
  history, with a policy keeping every final state ``--keep`` seconds and a pruner round
  every ``--prune-every`` seconds, or with retention off; jobs/s and the counts are taken over
  ``--duration`` seconds after ``--warmup`` seconds, by when the pruner is deleting.
  (Beside the kept history a short keep would prune the history itself.) The pruner yields
  to running jobs (``Retention.busy_share``, a twentieth of its time by default), so while the
  queue is saturated it deletes fewer jobs than finish; ``retention-unpaced`` is the same
  policy with ``busy_share=1.0``, the pruner that keeps up whatever it costs the queue.

The history is filled once per database, straight into ``runledger.job_history`` where it
exists (schema version 6), else into ``runledger.jobs``: finished jobs of a queue nothing
claims, spread over the past 30 days, then ``VACUUM (ANALYZE)`` and a checkpoint. One "empty"
and one "kept" database serve every round; between figures only the benchmark's own jobs,
attempts and events are deleted (not the history) and the tables vacuumed, and each figure
starts after a checkpoint. The figures run in turns, the order reversed every other round,
``--rounds`` times; the summary shows each one's median and range.

Runs whatever ``runledger`` is first on ``sys.path`` (each figure in a child process); with
``--before CHECKOUT`` the ``empty`` and ``kept`` figures run from that checkout too, in
databases migrated by it, in the same turns, so that the two versions compare side by side:

    python benchmarks/history.py                          # a new embedded server
    python benchmarks/history.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/history.py --before /work/wt_before  # a worktree of the older version
    python benchmarks/history.py --quick                  # 200,000 kept, small figures, once
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
from _postgres import bench_server
from psycopg import sql

from runledger.testing import TestServer

Conn = psycopg.Connection[Any]

JOB_TYPE = "history.noop"
QUEUE = "history.bench"
KEPT_QUEUE = "history.kept"
"""The queue of the kept history: nothing claims from it."""
PROBE_LIMIT = 64
"""Jobs the claim probe claims: the batch of the claimer at ``c=16 p=64``."""
FILL_CHUNK = 1_000_000
"""Kept jobs inserted per statement, so that a long fill shows its progress."""

# The rows enqueue_many writes for a no-op job (time-ordered ids, due now) and its event.
QUEUE_JOBS = """
with jobs as (
    insert into runledger.jobs (id, queue, job_type, payload, priority, run_at)
    select runledger.time_ordered_uuid(), %(queue)s, %(job_type)s, '{}'::jsonb, 0, now()
    from generate_series(1, %(count)s)
    returning id
)
insert into runledger.events (kind, job_id)
select 'job.enqueued', id from jobs
"""
# Finished jobs as a deployment that keeps 30 days of them has, oldest first: {table} is
# runledger.job_history where it exists, else runledger.jobs.
KEEP_HISTORY = """
insert into {table}
    (id, queue, job_type, status, attempt, max_attempts, run_at, started_at, output,
     created_at, updated_at, finished_at)
select runledger.time_ordered_uuid(), %(queue)s, %(job_type)s, 'succeeded', 1, 3, t, t, '{{}}',
       t, t, t
from (
    select now() - interval '30 days' * (1 - i::float8 / %(total)s::bigint) as t
    from generate_series(%(first)s::bigint, %(last)s::bigint) as i
) as ticks
"""
HAS_HISTORY_TABLE = "select to_regclass('runledger.job_history') is not null"
# Nothing but the benchmark writes attempts and events (the kept history has none): emptied
# whole. The benchmark's jobs go by their queue, wherever they are (job_history included).
FORGET_ATTEMPTS = "truncate runledger.job_attempts, runledger.events"
FORGET_JOBS = "delete from runledger.jobs where queue = %(queue)s"
# The second analyzes the hot tables only: from PostgreSQL 18 a VACUUM or ANALYZE of a parent
# also processes its inheritance children unless told "only" (the history did not change).
CLEAN_UP = "vacuum runledger.jobs, runledger.job_attempts, runledger.events"
SETTLE = "vacuum (analyze) {only}runledger.jobs, runledger.job_attempts, runledger.events"
COUNTERS = """
select d.blks_hit + d.blks_read, d.xact_commit,
       (select sum(t.n_tup_ins + t.n_tup_upd + t.n_tup_del) from pg_stat_user_tables as t
        where t.schemaname = 'runledger'),
       pg_current_wal_lsn()
from pg_stat_database as d
where d.datname = current_database()
"""
WAL_BYTES = "select pg_wal_lsn_diff(%s, %s)"
_INDEX_PAGES = re.compile(r'index "([^"]+)": pages: (\d+) in total')


@attrs.frozen(kw_only=True)
class Counters:
    """The server's counters at one moment."""

    buffers: int
    commits: int
    rows: int
    lsn: str


@attrs.frozen(kw_only=True)
class Figure:
    """One figure: jobs/s and what the server did per job (the probe and VACUUM for drains)."""

    name: str
    jobs_per_second: float
    buffers: float
    rows: float
    commits: float
    wal_bytes: float
    probe_buffers: float | None = None
    probe_ms: float | None = None
    vacuum_seconds: float | None = None
    vacuum_index_pages: int | None = None
    pruned_jobs: int | None = None
    short_window: bool = False


def counters(conn: Conn) -> Counters:
    """Read the counters afresh (the statistics snapshot of the transaction is dropped)."""
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(COUNTERS).fetchone()
    assert row is not None
    return Counters(
        buffers=int(row[0]), commits=int(row[1]), rows=int(row[2] or 0), lsn=str(row[3])
    )


def per_job(conn: Conn, before: Counters, after: Counters, jobs: int) -> dict[str, float]:
    """What the server did between ``before`` and ``after``, per job."""
    wal = conn.execute(WAL_BYTES, (after.lsn, before.lsn)).fetchone()
    assert wal is not None
    return {
        "buffers": (after.buffers - before.buffers) / jobs,
        "rows": (after.rows - before.rows) / jobs,
        "commits": (after.commits - before.commits) / jobs,
        "wal_bytes": float(wal[0]) / jobs,
    }


# --- the child: one figure, run from the checkout under test -------------------------------


def counting_registry(target: int) -> tuple[Any, threading.Event, Callable[[], int]]:
    """A registry with the no-op handler, an event set once ``target`` jobs succeeded, and a
    reader of how many have."""
    import runledger

    registry = runledger.Registry()
    done = threading.Event()
    lock = threading.Lock()
    succeeded = 0

    @registry.handler(JOB_TYPE, queue=QUEUE, max_attempts=1)
    def noop(ctx: runledger.JobContext, payload: object) -> None:
        """Do nothing: what is measured is the runtime and its ledger."""

    @registry.on_job_succeeded
    def count(event: object) -> None:
        nonlocal succeeded
        with lock:
            succeeded += 1
            if succeeded >= target:
                done.set()

    def read() -> int:
        with lock:
            return succeeded

    return registry, done, read


def runtime(dsn: str, registry: Any, retention: Any) -> Any:
    """The runtime measured: c=16 p=64, claiming from the benchmark's queue only."""
    import runledger

    return runledger.Runtime(
        dsn, registry, concurrency=16, prefetch=64, queues=[QUEUE], poll_interval=0.05,
        scheduler=False, retention=retention,
    )  # fmt: skip


def child_drain(dsn: str, jobs: int, timeout: float) -> dict[str, Any]:
    """Probe one claim, then drain ``jobs`` queued jobs with retention off."""
    from deep_queue import probe_claim

    with psycopg.connect(dsn, autocommit=True) as conn:
        probe = probe_claim(conn, PROBE_LIMIT, queue=QUEUE, job_type=JOB_TYPE)
        time.sleep(1.0)  # the statistics of the fill reach the shared counters
        before = counters(conn)
        registry, done, _ = counting_registry(jobs)
        started = time.monotonic()
        with runtime(dsn, registry, None):
            if not done.wait(timeout):
                raise SystemExit(f"{jobs} jobs did not drain in {timeout} s")
            took = time.monotonic() - started
        time.sleep(1.0)  # the runtime's last statistics reach the shared counters
        after = counters(conn)
        costs = per_job(conn, before, after, jobs)
    return {
        "jobs_per_second": jobs / took,
        **costs,
        "probe_buffers": float(probe.buffers),
        "probe_ms": probe.ms,
    }


def child_retention(
    dsn: str, jobs: int, args: argparse.Namespace, on: bool, share: float | None = None
) -> dict[str, Any]:
    """Run ``jobs`` queued jobs with retention on or off (on: paced by ``share`` if given, else
    by the default); count over the window after the warm-up, which ends early (and says so)
    if the queue runs low."""
    import runledger

    keep = datetime.timedelta(seconds=args.keep)
    pace = {} if share is None else {"busy_share": share}
    policy = (
        runledger.Retention(succeeded=keep, failed=keep, cancelled=keep, **pace) if on else None
    )
    low = int(jobs * 0.95)  # the queue must not run dry within the window
    registry, running_low, succeeded = counting_registry(low)
    rt = runtime(dsn, registry, policy)
    if rt.pruner is not None:
        # Not a Runtime argument: the soak (soak.py) sets it the same way.
        rt.pruner.interval = args.prune_every
    with psycopg.connect(dsn, autocommit=True) as conn, rt:
        if running_low.wait(args.warmup):
            raise SystemExit(f"{jobs} jobs ran low within the warm-up: raise --retention-jobs")
        before, first, pruned_before = counters(conn), succeeded(), _pruned(conn)
        started = time.monotonic()
        short = running_low.wait(args.duration)
        took = time.monotonic() - started
        after, last, pruned_after = counters(conn), succeeded(), _pruned(conn)
        costs = per_job(conn, before, after, last - first)
    return {
        "jobs_per_second": (last - first) / took,
        **costs,
        "pruned_jobs": pruned_after - pruned_before,
        "short_window": short,
    }


# Finished jobs deleted, by the server's count: the pruner's own total grows only when a
# round ends, and a paced round can outlast the window. (Statistics reach the shared counters
# up to a second late, at both ends of the window alike.)
PRUNED_JOBS = """
select coalesce(sum(n_tup_del), 0) from pg_stat_user_tables
where relid = coalesce(to_regclass('runledger.job_history'), 'runledger.jobs'::regclass)
"""


def _pruned(conn: Conn) -> int:
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(PRUNED_JOBS).fetchone()
    assert row is not None
    return int(row[0])


def child(argv: Sequence[str]) -> None:
    """``--child KIND DSN``: run one figure (or migrate) and print its result as JSON."""
    args = parse_args(argv)
    kind, dsn = args.child
    if kind == "migrate":
        import runledger

        with psycopg.connect(dsn, autocommit=True) as conn:
            runledger.migrate(conn)
        result: dict[str, Any] = {"runledger": str(Path(runledger.__file__).parent)}
    elif kind == "drain":
        result = child_drain(dsn, args.jobs, args.timeout)
    elif kind in ("retention-on", "retention-off"):
        on = kind == "retention-on"
        share = args.busy_share if on else None
        result = child_retention(dsn, args.retention_jobs, args, on=on, share=share)
    elif kind == "retention-unpaced":
        result = child_retention(dsn, args.retention_jobs, args, on=True, share=1.0)
    else:
        raise SystemExit(f"unknown child {kind!r}")
    print(json.dumps(result), flush=True)


# --- the parent: databases, turns, summary --------------------------------------------------


@attrs.frozen(kw_only=True)
class Checkout:
    """A version under test: a label and the PYTHONPATH its children run with (None: ours)."""

    label: str
    path: str | None

    def run(self, argv: Sequence[str], kind: str, dsn: str) -> dict[str, Any]:
        """Run one child of this checkout and return its JSON result."""
        env = dict(os.environ)
        if self.path is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [self.path, *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        done = subprocess.run(
            [sys.executable, __file__, *argv, "--child", kind, dsn],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"{self.label} {kind} failed (exit {done.returncode})")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


@attrs.frozen(kw_only=True)
class Database:
    """A scratch database migrated by ``checkout``, with ``history`` finished jobs kept."""

    name: str
    dsn: str
    checkout: Checkout
    history: int


@contextlib.contextmanager
def databases(server: TestServer) -> Iterator[list[Database]]:
    """A list the caller appends databases to; every one is dropped at the end."""
    made: list[Database] = []
    try:
        yield made
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            for db in made:
                admin.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where datname = %s and pid <> pg_backend_pid()",
                    (db.name,),
                )
                admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(db.name)))


def create(
    server: TestServer, made: list[Database], checkout: Checkout, history: int, argv: list[str]
) -> Database:
    """A new database, migrated by ``checkout``, with ``history`` finished jobs kept in it."""
    name = f"runledger_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    db = Database(name=name, dsn=server.dsn_for(name), checkout=checkout, history=history)
    made.append(db)
    migrated = checkout.run(argv, "migrate", db.dsn)
    print(f"  {checkout.label}: {name} migrated by runledger from {migrated['runledger']}")
    if history:
        keep_history(db)
    return db


def keep_history(db: Database) -> None:
    """Fill the kept history once: straight into the history table where there is one."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        row = conn.execute(HAS_HISTORY_TABLE).fetchone()
        table = "runledger.job_history" if row and row[0] else "runledger.jobs"
        started = time.monotonic()
        statement = sql.SQL(KEEP_HISTORY).format(table=sql.SQL(table))
        for first in range(1, db.history + 1, FILL_CHUNK):
            last = min(first + FILL_CHUNK - 1, db.history)
            conn.execute(
                statement,
                {"queue": KEPT_QUEUE, "job_type": JOB_TYPE, "total": db.history,
                 "first": first, "last": last},
            )  # fmt: skip
            print(
                f"  {db.checkout.label}: {last:,} of {db.history:,} kept jobs in {table} "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        conn.execute(f"vacuum (analyze) {table}")
        checkpoint(conn)
        size = conn.execute(
            "select pg_size_pretty(pg_table_size(%s::regclass)), "
            "pg_size_pretty(pg_indexes_size(%s::regclass))",
            (table, table),
        ).fetchone()
        assert size is not None
        print(
            f"  {db.checkout.label}: history filled, vacuumed and analyzed in "
            f"{time.monotonic() - started:.0f} s ({size[0]} table, {size[1]} indexes)",
            flush=True,
        )


def checkpoint(conn: Conn) -> None:
    """Checkpoint, so that every figure starts writing full-page images afresh."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("checkpoint")


def prepare(db: Database, jobs: int) -> None:
    """Forget the benchmark's own jobs, attempts and events (not the history), vacuum, queue
    ``jobs`` new ones, settle the tables and checkpoint."""
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.execute(FORGET_ATTEMPTS)
        conn.execute(FORGET_JOBS, {"queue": QUEUE})
        conn.execute(CLEAN_UP)
        pg18 = conn.info.server_version >= 180000
        if not pg18:
            # a VACUUM of the parent leaves its inheritance children alone before 18
            row = conn.execute(HAS_HISTORY_TABLE).fetchone()
            if row and row[0]:
                conn.execute("vacuum runledger.job_history")
        conn.execute(QUEUE_JOBS, {"queue": QUEUE, "job_type": JOB_TYPE, "count": jobs})
        conn.execute(SETTLE.format(only="only " if pg18 else ""))
        checkpoint(conn)


def vacuum_hot_table(db: Database) -> tuple[float, int]:
    """Time one VACUUM of the hot table as the reaper runs it; its seconds and the index pages
    it scanned (from VERBOSE)."""
    notices: list[str] = []
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        only = "only " if conn.info.server_version >= 180000 else ""
        started = time.monotonic()
        conn.execute(f"vacuum (verbose, index_cleanup on) {only}runledger.jobs")
        took = time.monotonic() - started
    pages = sum(int(m.group(2)) for text in notices for m in _INDEX_PAGES.finditer(text))
    return took, pages


def run_figure(argv: list[str], name: str, db: Database, args: argparse.Namespace) -> Figure:
    """Prepare ``db``, run one figure in a child of its checkout, and time the VACUUM after a
    drain."""
    kind = "drain" if name.endswith(("empty", "kept")) else name.rsplit(" ", maxsplit=1)[-1]
    prepare(db, args.jobs if kind == "drain" else args.retention_jobs)
    result = db.checkout.run(argv, kind, db.dsn)
    if kind == "drain":
        seconds, pages = vacuum_hot_table(db)
        result.update(vacuum_seconds=seconds, vacuum_index_pages=pages)
    return Figure(name=name, **result)


def show(figure: Figure) -> str:
    """One figure on one line, as it finishes."""
    text = (
        f"{figure.jobs_per_second:>8,.0f} jobs/s, per job {figure.buffers:.1f} bufs, "
        f"{figure.rows:.2f} rows, {figure.wal_bytes:,.0f} WAL B"
    )
    if figure.probe_buffers is not None:
        text += f"; claim probe {figure.probe_buffers:.0f} bufs {figure.probe_ms:.1f} ms"
    if figure.vacuum_seconds is not None:
        text += (
            f"; VACUUM of the hot table {figure.vacuum_seconds:.2f} s "
            f"({figure.vacuum_index_pages:,} index pages)"
        )
    if figure.pruned_jobs is not None:
        text += f"; {figure.pruned_jobs:,} jobs pruned in the window"
    if figure.short_window:
        text += " (window ended early: the queue ran low)"
    return text


COLUMNS = (
    ("jobs/s", "jobs_per_second", "{:,.0f}"),
    ("bufs/job", "buffers", "{:.1f}"),
    ("rows/job", "rows", "{:.2f}"),
    ("commits/job", "commits", "{:.3f}"),
    ("WAL B/job", "wal_bytes", "{:,.0f}"),
    ("probe bufs", "probe_buffers", "{:.0f}"),
    ("probe ms", "probe_ms", "{:.2f}"),
    ("VACUUM s", "vacuum_seconds", "{:.3f}"),
    ("idx pages", "vacuum_index_pages", "{:,.0f}"),
    ("pruned", "pruned_jobs", "{:,.0f}"),
)


def median(figures: Sequence[Figure], field: str) -> float | None:
    """The median of one field over the rounds, None where the figure has no such field."""
    values = [float(v) for f in figures if (v := getattr(f, field)) is not None]
    return statistics.median(values) if values else None


def report(names: Sequence[str], results: dict[str, list[Figure]], ours: str) -> None:
    """Print the medians, the jobs/s of every round, and the ratios the issue asks for."""
    print("\nmedians over the rounds (jobs/s of each round in brackets):")
    print(f"{'figure':<22} " + " ".join(f"{title:>11}" for title, _, _ in COLUMNS) + "  rounds")
    for name in names:
        figs = results[name]
        cells = []
        for _, field, fmt in COLUMNS:
            value = median(figs, field)
            cells.append(f"{'-' if value is None else fmt.format(value):>11}")
        rounds = " ".join(f"{f.jobs_per_second:,.0f}" for f in figs)
        print(f"{name:<22} " + " ".join(cells) + f"  [{rounds}]")
    print()
    for a, b, what in (
        (f"{ours} kept", f"{ours} empty", f"kept / empty jobs/s ({ours})"),
        ("before kept", "before empty", "kept / empty jobs/s (before)"),
        (f"{ours} kept", "before kept", f"kept: {ours} / before jobs/s"),
        (f"{ours} retention-on", f"{ours} retention-off", "retention on / off jobs/s"),
        (f"{ours} retention-unpaced", f"{ours} retention-off", "unpaced on / off jobs/s"),
    ):
        if a in results and b in results:
            mine, theirs = (
                median(results[a], "jobs_per_second"),
                median(results[b], "jobs_per_second"),
            )
            assert mine is not None and theirs is not None
            pairs = [
                x.jobs_per_second / y.jobs_per_second
                for x, y in zip(results[a], results[b], strict=True)
            ]
            print(f"{what:<32} {mine / theirs:.3f} (per round {min(pairs):.3f}-{max(pairs):.3f})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--quick: 200,000 kept jobs, 20,000 per drain, a 5 s window with retention "
        "(keep 3 s), one round; a smoke run of a few minutes.",
    )
    parser.add_argument("--dsn", help="server (default: $RUNLEDGER_BENCH_DSN, else embedded)")
    parser.add_argument(
        "--quick", action="store_true",
        help="200,000 kept, 20,000 per drain, short retention figures, one round",
    )  # fmt: skip
    parser.add_argument("--before", metavar="CHECKOUT", help="also run a checkout's runledger")
    parser.add_argument("--history", type=int, help="finished jobs kept (default 10,000,000)")
    parser.add_argument("--jobs", type=int, help="jobs queued and drained per drain figure")
    parser.add_argument("--rounds", type=int, help="rounds of every figure, in turns")
    parser.add_argument(
        "--figures", default="empty,kept,retention",
        help="which: empty, kept, retention (default all three)",
    )  # fmt: skip
    parser.add_argument("--retention-jobs", type=int, help="jobs queued per retention figure")
    parser.add_argument("--keep", type=float, help="seconds retention keeps every state")
    parser.add_argument("--prune-every", type=float, help="seconds between pruner rounds")
    parser.add_argument(
        "--busy-share", type=float,
        help="Retention.busy_share of the retention-on figure (default: the policy's default)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=float, help="seconds before a retention window")
    parser.add_argument("--duration", type=float, help="seconds of a retention window")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per drain")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "DSN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = {
        "history": 200_000, "jobs": 20_000, "rounds": 1, "retention_jobs": 200_000,
        "keep": 3.0, "prune_every": 1.0, "warmup": 6.0, "duration": 5.0,
    }  # fmt: skip
    full = {
        "history": 10_000_000, "jobs": 100_000, "rounds": 3, "retention_jobs": 800_000,
        "keep": 10.0, "prune_every": 5.0, "warmup": 20.0, "duration": 30.0,
    }  # fmt: skip
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    if unknown := set(args.figures) - {"empty", "kept", "retention"}:
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    if args.warmup <= args.keep + args.prune_every:
        parser.error("need --warmup > --keep + --prune-every: the pruner must be deleting")
    return args


def passthrough(args: argparse.Namespace) -> list[str]:
    """The options a child needs, as arguments."""
    return [
        f"--jobs={args.jobs}", f"--retention-jobs={args.retention_jobs}", f"--keep={args.keep}",
        f"--prune-every={args.prune_every}", f"--warmup={args.warmup}",
        f"--duration={args.duration}", f"--timeout={args.timeout}",
        *([] if args.busy_share is None else [f"--busy-share={args.busy_share}"]),
    ]  # fmt: skip


def main() -> None:
    if "--child" in sys.argv:
        child(sys.argv[1:])
        return
    args = parse_args()
    import runledger

    ours = Checkout(label="after" if args.before else "this", path=None)
    checkouts = [ours] + ([Checkout(label="before", path=args.before)] if args.before else [])
    argv = passthrough(args)
    print(f"runledger from {Path(runledger.__file__).parent} ({ours.label})")
    if args.before:
        print(f"and from {args.before} (before)")
    with bench_server(args.dsn) as server, databases(server) as made:
        with psycopg.connect(server.dsn) as conn:
            version = conn.execute("show server_version").fetchone()
            autovacuum = conn.execute("show autovacuum").fetchone()
        assert version is not None and autovacuum is not None
        print(
            f"PostgreSQL {version[0]} (autovacuum {autovacuum[0]}); c=16 p=64; "
            f"{args.history:,} kept, {args.jobs:,} jobs per drain; retention: "
            f"{args.retention_jobs:,} queued, keep {args.keep:g} s, a round every "
            f"{args.prune_every:g} s, window {args.warmup:g}-{args.warmup + args.duration:g} s, "
            f"busy share {'default' if args.busy_share is None else args.busy_share}; "
            f"{args.rounds} round(s)",
            flush=True,
        )
        plan: list[tuple[str, Database]] = []
        for checkout in checkouts:
            empty = create(server, made, checkout, 0, argv)
            if "empty" in args.figures:
                plan.append((f"{checkout.label} empty", empty))
            if "kept" in args.figures:
                plan.append(
                    (f"{checkout.label} kept", create(server, made, checkout, args.history, argv))
                )
            if "retention" in args.figures and checkout is ours:
                plan.append((f"{checkout.label} retention-on", empty))
                plan.append((f"{checkout.label} retention-off", empty))
                plan.append((f"{checkout.label} retention-unpaced", empty))
        results: dict[str, list[Figure]] = {name: [] for name, _ in plan}
        for n in range(args.rounds):
            for name, db in plan if n % 2 == 0 else plan[::-1]:
                figure = run_figure(argv, name, db, args)
                results[name].append(figure)
                print(f"  round {n + 1}: {name:<22} {show(figure)}", flush=True)
    report([name for name, _ in plan], results, ours.label)


if __name__ == "__main__":
    main()
