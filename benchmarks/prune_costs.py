"""What pruning costs per pruned job, by table and index (issue 16: retention on within 5 % of off).

Runs ``--jobs`` queued no-op jobs with the real runtime (``Runtime(concurrency=16,
prefetch=64, retention=None)``), so the history holds exactly the rows a runtime writes (the
job in ``runledger.job_history``, its attempt, its events); then settles the tables, takes a
checkpoint (so the first change of every page after it writes a full-page image, as it does
in production between checkpoints) and prunes them all with the pruner's own batches
(``prune_jobs``, keep 0), then the pruner's VACUUM of the history tables. Per pruned job it
prints, for the delete batches and for the VACUUM apart: shared buffers touched per table
and per index (``pg_statio_user_tables`` / ``_indexes``), rows deleted per table, WAL bytes,
WAL records and full-page images (``pg_stat_wal``, PostgreSQL 14+), and the seconds taken.
With ``--explain`` it also prints ``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of one batch. Then it
counts one round's orphan-event sweep, per event examined.

``--steady QUEUED`` measures instead what ``history.py``'s retention figure measures, with the
same breakdown by table and index: QUEUED jobs run by ``Runtime(concurrency=16, prefetch=64)``
with every state kept 10 s and a pruner round every 5 s, then with retention off, twice in
turns, counted over 20 s after a 20 s warm-up, per job run.

Runs whatever ``runledger`` is first on ``sys.path``: put another checkout first on
``PYTHONPATH`` to measure it the same way.

    python benchmarks/prune_costs.py                      # a new embedded server
    python benchmarks/prune_costs.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/prune_costs.py --jobs 50000 --queued 200000   # beside a deep queue
    python benchmarks/prune_costs.py --steady 400000                # on against off
"""

from __future__ import annotations

import argparse
import datetime
import threading
import time
from typing import Any

import psycopg
from _postgres import bench_server, scratch_database

import runledger
from runledger.core.status import JobStatus
from runledger.postgres import retention, segments
from runledger.runtime.pruner import SWEEP_WINDOWS

Conn = psycopg.Connection[Any]

JOB_TYPE = "prune.noop"
QUEUE = "prune.bench"
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
TABLES = """
select relname, heap_blks_hit + heap_blks_read, coalesce(idx_blks_hit + idx_blks_read, 0),
       coalesce(toast_blks_hit + toast_blks_read, 0)
from pg_statio_user_tables where schemaname = 'runledger'
"""
INDEXES = """
select indexrelname, idx_blks_hit + idx_blks_read
from pg_statio_user_indexes where schemaname = 'runledger'
"""
DELETED = """
select relname, n_tup_del, n_tup_upd, n_tup_ins
from pg_stat_user_tables where schemaname = 'runledger'
"""
WAL = "select pg_current_wal_lsn(), wal_records, wal_fpi from pg_stat_wal"


def snapshot(conn: Conn) -> dict[str, Any]:
    """Every counter this script reports, read afresh."""
    conn.execute("select pg_stat_clear_snapshot()")
    tables = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(TABLES)}
    indexes = {r[0]: int(r[1]) for r in conn.execute(INDEXES)}
    rows = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(DELETED)}
    lsn, records, fpi = conn.execute(WAL).fetchone() or (None, 0, 0)
    return {"tables": tables, "indexes": indexes, "rows": rows, "lsn": lsn,
            "records": int(records), "fpi": int(fpi), "at": time.monotonic()}  # fmt: skip


def report(conn: Conn, title: str, a: dict[str, Any], b: dict[str, Any], jobs: int) -> None:
    """Print what happened between snapshots ``a`` and ``b``, per job."""
    time.sleep(1.0)
    wal_row = conn.execute("select pg_wal_lsn_diff(%s, %s)", (b["lsn"], a["lsn"])).fetchone()
    wal = float(wal_row[0]) if wal_row else 0.0
    print(f"\n{title}: {jobs:,} jobs in {b['at'] - a['at']:.2f} s")
    print(f"  WAL {wal / jobs:,.0f} B/job, records {(b['records'] - a['records']) / jobs:.2f}"
          f"/job, full-page images {(b['fpi'] - a['fpi']) / jobs:.3f}/job")  # fmt: skip
    total = 0.0
    print(f"  {'relation':32} {'heap bufs':>10} {'idx bufs':>10} {'del rows':>9} {'upd':>6}")
    for name in sorted(b["tables"]):
        h0, i0, _ = a["tables"].get(name, (0, 0, 0))
        h1, i1, _ = b["tables"][name]
        d0, u0, _ = a["rows"].get(name, (0, 0, 0))
        d1, u1, _ = b["rows"].get(name, (0, 0, 0))
        heap, idx = (h1 - h0) / jobs, (i1 - i0) / jobs
        dele, upd = (d1 - d0) / jobs, (u1 - u0) / jobs
        total += heap + idx
        if heap or idx or dele or upd:
            print(f"  {name:32} {heap:10.2f} {idx:10.2f} {dele:9.2f} {upd:6.2f}")
    for name in sorted(b["indexes"]):
        n = (b["indexes"][name] - a["indexes"].get(name, 0)) / jobs
        if n:
            print(f"    index {name:26} {n:10.2f}")
    print(f"  runledger buffers {total:.1f}/job")


class Succeeded:
    """Counts the jobs that succeeded; ``done`` is set once ``target`` of them have."""

    def __init__(self, target: int | None) -> None:
        self.count = 0
        self.done = threading.Event()
        self._target = target
        self._lock = threading.Lock()

    def __call__(self, event: object) -> None:
        with self._lock:
            self.count += 1
            if self._target is not None and self.count >= self._target:
                self.done.set()


def noop_registry(target: int | None = None) -> tuple[runledger.Registry, Succeeded]:
    """A registry with the no-op handler, and the counter of its successes."""
    registry = runledger.Registry()

    @registry.handler(JOB_TYPE, queue=QUEUE, max_attempts=1)
    def noop(ctx: runledger.JobContext, payload: object) -> None:
        """Nothing."""

    succeeded = Succeeded(target)
    registry.on_job_succeeded(succeeded)
    return registry, succeeded


def fill(dsn: str, jobs: int) -> None:
    """Queue ``jobs`` no-op jobs and run them all with the runtime, retention off."""
    registry, succeeded = noop_registry(target=jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(0, jobs, 100_000):
            conn.execute(QUEUE_JOBS, {"queue": QUEUE, "job_type": JOB_TYPE,
                                      "count": min(100_000, jobs - first)})  # fmt: skip
        conn.execute("vacuum (analyze) runledger.jobs")
    started = time.monotonic()
    with runledger.Runtime(dsn, registry, concurrency=16, prefetch=64, queues=[QUEUE],
                           poll_interval=0.05, scheduler=False, retention=None):  # fmt: skip
        if not succeeded.done.wait(900):
            raise SystemExit("the fill did not drain")
    print(f"filled {jobs:,} jobs in {time.monotonic() - started:.1f} s")


def explain_batch(conn: Conn, keep: datetime.timedelta, batch: int) -> None:
    """Print EXPLAIN (ANALYZE, BUFFERS, WAL) of one batch's delete, rolled back."""
    with conn.transaction():
        conn.execute(retention.TRY_LOCK, {"key": retention.PRUNE_LOCK_KEY})
        params: dict[str, Any] = {"status": "succeeded", "keep": keep, "limit": batch}
        sql = getattr(retention, "PRUNE_JOBS", None)
        if sql is None:  # this version: lock the due jobs, then delete them by id
            ids = sorted(r[0] for r in conn.execute(retention.LOCK_DUE_JOBS, params))
            params = {"ids": ids, "history": ids, "first": ids[0], "last": ids[-1],
                      "first_history": ids[0], "last_history": ids[-1]}  # fmt: skip
            conn.execute(retention.PRUNING_ON)
            sql = retention.DELETE_JOBS
        plan = conn.execute("explain (analyze, buffers, wal, costs off) " + sql, params)
        print("\n".join(r[0] for r in plan.fetchall()))
        raise psycopg.Rollback()


def prune_all(conn: Conn, keep: datetime.timedelta, batch: int, by_segment: bool) -> None:
    """Prune every due succeeded job in the pruner's batches, then VACUUM, reporting both.
    ``by_segment``: as the pruner does with every state pruned, the batches leave the events,
    and the segment that holds them (closed before the checkpoint) is dropped after them."""
    a = snapshot(conn)
    pruned = batches = 0
    while True:
        with conn.transaction():
            got = retention.prune_jobs(
                conn, JobStatus.SUCCEEDED, keep, limit=batch, events=not by_segment
            )
        batches += 1
        pruned += got.jobs
        if got.jobs < batch:
            break
    title = f"prune ({batches} batches of {batch})"
    if by_segment:
        began = time.monotonic()
        with conn.transaction():
            dropped = segments.drop_segment(conn, keep)
        done = "dropped" if dropped.dropped else "cleaned in place"
        moved = "copied out" if dropped.dropped else "left"
        title += (
            f", then segment {dropped.segment} {done} ({dropped.events:,} events, "
            f"{dropped.kept:,} {moved}) in {time.monotonic() - began:.2f} s"
        )
    time.sleep(1.0)
    b = snapshot(conn)
    report(conn, title, a, b, max(pruned, 1))
    for table in ("job_history", "job_attempts", "events"):
        conn.execute(f"vacuum runledger.{table}")
    time.sleep(1.0)
    c = snapshot(conn)
    report(conn, "VACUUM of job_history, job_attempts, events after", b, c, max(pruned, 1))


def sweep_round(conn: Conn, keep: datetime.timedelta) -> None:
    """One round's orphan-event sweep, as the pruner runs it after its batches."""
    a = snapshot(conn)
    after, windows, deleted = 0, 0, 0
    for _ in range(SWEEP_WINDOWS):
        with conn.transaction():
            swept = retention.sweep_orphan_events(conn, keep, after=after)
        windows += 1
        deleted += swept.deleted
        after = swept.next_after
        if after == 0:
            break
    time.sleep(1.0)
    b = snapshot(conn)
    examined = windows * retention.EVENT_WINDOW
    report(conn, f"orphan sweep, {windows} windows (up to {examined:,} events examined, "
           f"{deleted} deleted); per EXAMINED EVENT", a, b, examined)  # fmt: skip


AUTOVACUUMS = """
select coalesce(sum(autovacuum_count + vacuum_count), 0) from pg_stat_user_tables
where schemaname = 'runledger'
"""


def steady(
    dsn: str, queued: int, on: bool, *, warmup: float, duration: float, no_sweep: bool
) -> None:
    """``history.py``'s retention figure with the counters above: ``queued`` jobs run by
    the runtime with every state kept 10 s and a pruner round every 5 s (or retention
    off); what the server did over ``duration`` s after ``warmup`` s, per job run."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("delete from runledger.events")
        conn.execute("delete from runledger.job_attempts")
        conn.execute("delete from runledger.jobs")
        for first in range(0, queued, 100_000):
            conn.execute(QUEUE_JOBS, {"queue": QUEUE, "job_type": JOB_TYPE,
                                      "count": min(100_000, queued - first)})  # fmt: skip
        conn.execute("vacuum (analyze) runledger.jobs, runledger.job_attempts, runledger.events")
        conn.execute("vacuum (analyze) runledger.job_history")
        conn.execute("checkpoint")
    registry, succeeded = noop_registry()
    keep = datetime.timedelta(seconds=10)
    policy = runledger.Retention(succeeded=keep, failed=keep, cancelled=keep) if on else None
    rt = runledger.Runtime(dsn, registry, concurrency=16, prefetch=64, queues=[QUEUE],
                           poll_interval=0.05, scheduler=False, retention=policy)  # fmt: skip
    if rt.pruner is not None:
        rt.pruner.interval = 5.0
        if no_sweep:  # as if a pass had just ended: what the sweep's first pass adds
            rt.pruner._pass_ended = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn, rt:
        time.sleep(warmup)
        a, first, vac_a = snapshot(conn), succeeded.count, conn.execute(AUTOVACUUMS).fetchone()
        time.sleep(duration)
        b, last, vac_b = snapshot(conn), succeeded.count, conn.execute(AUTOVACUUMS).fetchone()
        pruned = 0 if rt.pruner is None else rt.pruner.total.jobs
        assert vac_a is not None and vac_b is not None
        report(conn, f"retention {'on' if on else 'off'}: {(last - first) / duration:,.0f} "
               f"jobs/s, {pruned:,} pruned in all, {vac_b[0] - vac_a[0]} VACUUMs of runledger "
               "tables in the window; per job RUN", a, b, max(last - first, 1))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--batch", type=int, default=retention.JOB_BATCH)
    parser.add_argument(
        "--queued", type=int, default=0,
        help="jobs left queued (in a queue nothing claims) beside the history, as in history.py",
    )  # fmt: skip
    parser.add_argument(
        "--steady", type=int, default=0, metavar="QUEUED",
        help="instead: QUEUED jobs run with retention on, then off, counted per job run",
    )  # fmt: skip
    parser.add_argument(
        "--layouts", default="rows,segments",
        help="how the events go: rows (with their jobs), segments (a segment dropped whole)",
    )  # fmt: skip
    parser.add_argument(
        "--no-sweep", action="store_true",
        help="with --steady: no orphan-event sweep pass at start (this version only)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"runledger from {runledger.__file__}")
    keep = datetime.timedelta(0)
    if args.steady:
        with bench_server(args.dsn) as server, scratch_database(server) as dsn:
            for on in (True, False, True, False):
                steady(dsn, args.steady, on, warmup=20.0, duration=20.0,
                       no_sweep=args.no_sweep)  # fmt: skip
        return
    with bench_server(args.dsn) as server:
        for layout in args.layouts.split(","):
            if layout not in ("rows", "segments"):
                raise SystemExit(f"--layouts: rows or segments, not {layout!r}")
            print(f"\n=== events deleted by {layout}")
            with scratch_database(server) as dsn:
                measure(dsn, args, keep, by_segment=layout == "segments")


def measure(dsn: str, args: argparse.Namespace, keep: datetime.timedelta, by_segment: bool) -> None:
    """Fill the history, then prune it all, reporting what each step cost."""
    fill(dsn, args.jobs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for first in range(0, args.queued, 100_000):
            conn.execute(QUEUE_JOBS, {"queue": "prune.idle", "job_type": JOB_TYPE,
                                      "count": min(100_000, args.queued - first)})  # fmt: skip
        conn.execute("vacuum (analyze) runledger.jobs, runledger.job_attempts")
        conn.execute("vacuum (analyze) runledger.events, runledger.job_history")
        if by_segment:  # the history's events in a closed segment, as a day ago
            with conn.transaction():
                segments.open_segment(conn, older_than=keep)
        conn.execute("checkpoint")
        time.sleep(1.0)
        if args.explain:
            explain_batch(conn, keep, args.batch)
            conn.execute("checkpoint")
        prune_all(conn, keep, args.batch, by_segment)
        if not by_segment:
            sweep_round(conn, keep)
        left = conn.execute(
            "select (select count(*) from runledger.jobs), "
            "(select count(*) from runledger.job_attempts), "
            "(select count(*) from runledger.events)"
        ).fetchone()
        print(f"\nleft: jobs, attempts, events = {left}")


if __name__ == "__main__":
    main()
