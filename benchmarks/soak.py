"""A soak with retention on: a steady offered load for many minutes, and the ledger's size.

One in-process ``Runtime`` runs no-op jobs enqueued at ``--rate`` jobs/s (2 % of them fail for
good, and one two-step workflow run a second), with a retention policy that keeps every final
state ``--keep`` seconds and a pruner round every ``--prune-every`` seconds. Every
``--sample`` seconds it prints the jobs finished per second meanwhile and the size of every
``runledger`` table and index. At the end it compares each relation's size, and the jobs/s,
with what they were after ``--warmup`` minutes, sample by sample: with retention bounding the
ledger, no relation grows more than 10 % (relations under 1 MB at the warm-up are reported,
not judged; a VACUUM that truncates a table shrinks it, which is not growth).

The verdict compares envelopes, not single samples: each relation's largest size over the
last ``--warmup`` minutes against its largest over the ``--warmup`` minutes from the
reference, with sizes read every ``--peek`` seconds between the printed samples. The hot
table's heap fills with dead rows between the reaper's VACUUMs and is truncated again by them,
and the events' segments fill for a minute and go one at a time, so one reading of either can
be a fraction of the next; their peaks, not a reading taken at a trough, are what would grow if
they grew, and a reading a minute would catch each cycle's at a different point of it.

    python benchmarks/soak.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/soak.py --minutes 60            # the one-hour soak
    python benchmarks/soak.py --minutes 3 --warmup 1  # a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import threading
import time
from typing import Any

import psycopg
from _postgres import bench_server, scratch_database

import runledger

Conn = psycopg.Connection[Any]

# The segments of runledger.events (schema 12) count as the one table and its indexes, and
# their own primary keys as one index: segments come and go, what they hold together is
# what must stay bounded.
SIZES = """
select coalesce(p.relname, regexp_replace(c.relname, '^events_s[0-9]+_pkey$', 'events_s*_pkey')),
       c.relkind, sum(pg_relation_size(c.oid))
from pg_class c
left join pg_inherits i on i.inhrelid = c.oid
left join pg_class p on p.oid = i.inhparent and p.relkind in ('p', 'I')
where c.relnamespace = 'runledger'::regnamespace and c.relkind in ('r', 'i')
group by 1, 2
order by 1
"""
ROWS = """
select (select count(*) from runledger.jobs), (select count(*) from runledger.events),
       (select count(*) from runledger.job_attempts), (select count(*) from runledger.workflow_runs)
"""
MB = 1024 * 1024
TOLERANCE = 0.10


def sizes(conn: Conn) -> dict[str, int]:
    return {row[0]: int(row[2]) for row in conn.execute(SIZES).fetchall()}


def feed(dsn: str, rate: float, stop: threading.Event, offered: itertools.count[int]) -> None:
    """Enqueue ``rate`` jobs a second in ten batches, and one workflow run a second."""
    tick = 0.1
    per_tick = max(int(rate * tick), 1)
    workflow = (
        runledger.WorkflowBuilder("soak.flow")
        .step("a", job="soak.noop")
        .step("b", job="soak.noop", after="a")
        .build()
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        next_at = time.monotonic()
        n = 0
        while not stop.is_set():
            jobs = [
                runledger.Job("soak.fail" if (n + i) % 50 == 0 else "soak.noop")
                for i in range(per_tick)
            ]
            with conn.transaction():
                runledger.enqueue_many(conn, jobs)
                if n % (10 * per_tick) == 0:
                    runledger.enqueue_workflow(conn, workflow)
            for _ in jobs:
                next(offered)
            n += per_tick
            next_at += tick
            stop.wait(max(next_at - time.monotonic(), 0))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="server (default: $RUNLEDGER_BENCH_DSN, else embedded)")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes before the reference")
    parser.add_argument("--rate", type=float, default=1_000.0, help="jobs offered per second")
    parser.add_argument("--keep", type=float, default=120.0, help="seconds each state is kept")
    parser.add_argument("--prune-every", type=float, default=15.0, help="seconds between rounds")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument(
        "--peek", type=float, default=5.0,
        help="seconds between the size readings the verdict's peaks are taken from",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--events", choices=("segments", "rows"), default="segments",
        help="how the pruner deletes events: by segment (the policy's way), or row by row",
    )  # fmt: skip
    parser.add_argument(
        "--log-pruner", action="store_true",
        help="print the pruner's and the reaper's log lines (stderr): rounds and VACUUMs",
    )  # fmt: skip
    args = parser.parse_args()
    if not 0 < args.warmup < args.minutes:
        parser.error("need 0 < --warmup < --minutes")
    return args


def soak_registry(done: itertools.count[int]) -> runledger.Registry:
    registry = runledger.Registry()

    @registry.handler("soak.noop")
    def noop(ctx: runledger.JobContext, payload: Any) -> None:
        next(done)

    @registry.handler("soak.fail", max_attempts=1)
    def fail(ctx: runledger.JobContext, payload: Any) -> None:
        next(done)
        raise ValueError("soak: a dead letter")

    return registry


Sample = tuple[float, float, dict[str, int]]
Reading = tuple[float, dict[str, int]]


def sample_until(
    conn: Conn, args: argparse.Namespace, done: itertools.count[int]
) -> tuple[list[Sample], list[Reading]]:
    """Print a sample every ``--sample`` seconds for ``--minutes``, reading the sizes every
    ``--peek`` seconds meanwhile; return the samples and every reading."""
    samples: list[Sample] = []
    readings: list[Reading] = []
    started = time.monotonic()
    last_done, last_at = 0, started
    print(f"{'min':>6} {'jobs/s':>8} {'MB':>8} {'jobs':>9} {'events':>9} {'attempts':>9} "
          f"{'runs':>7}")  # fmt: skip
    while time.monotonic() - started < args.minutes * 60:
        due = min(last_at + args.sample, started + args.minutes * 60)
        while (left := due - time.monotonic()) > 0:
            time.sleep(min(args.peek, left))
            if time.monotonic() < due:
                readings.append(((time.monotonic() - started) / 60, sizes(conn)))
        now = time.monotonic()
        finished = next(done)  # counts itself: the next reading starts one higher
        rate = (finished - last_done) / (now - last_at)
        last_done, last_at = finished + 1, now
        size = sizes(conn)
        rows = conn.execute(ROWS).fetchone()
        assert rows is not None
        minute = (now - started) / 60
        samples.append((minute, rate, size))
        readings.append((minute, size))
        print(
            f"{minute:6.1f} {rate:8.0f} {sum(size.values()) / MB:8.1f} "
            f"{rows[0]:9,} {rows[1]:9,} {rows[2]:9,} {rows[3]:7,}",
            flush=True,
        )
    return samples, readings


def main() -> None:
    args = parse_args()
    # The dead letters the soak makes on purpose would log 20 tracebacks a second.
    logging.getLogger("runledger.jobs").setLevel(logging.CRITICAL)
    if args.log_pruner:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        for name in ("runledger.pruner", "runledger.reaper"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)
    done: itertools.count[int] = itertools.count()
    offered: itertools.count[int] = itertools.count()
    registry = soak_registry(done)
    keep = datetime.timedelta(seconds=args.keep)
    policy = runledger.Retention(succeeded=keep, failed=keep, cancelled=keep)
    with (
        bench_server(args.dsn) as server,
        scratch_database(server) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        version = conn.execute("show server_version").fetchone()
        autovacuum = conn.execute("show autovacuum").fetchone()
        assert version is not None and autovacuum is not None
        print(
            f"soak: PostgreSQL {version[0]} (autovacuum {autovacuum[0]}), {args.rate:g} "
            f"jobs/s offered for {args.minutes:g} min, c={args.concurrency}, keep "
            f"{args.keep:g} s, a pruner round every {args.prune_every:g} s, events by "
            f"{args.events}; "
            f"reference at {args.warmup:g} min"
        )
        stop = threading.Event()
        feeder = threading.Thread(target=feed, args=(dsn, args.rate, stop, offered))
        runtime = runledger.Runtime(dsn, registry, concurrency=args.concurrency, retention=policy)
        assert runtime.pruner is not None
        runtime.pruner.interval = args.prune_every
        if args.events == "rows":
            runtime.pruner.segment_length = None  # as with a state kept forever
        with runtime:
            feeder.start()
            try:
                samples, readings = sample_until(conn, args, done)
            finally:
                stop.set()
                feeder.join()
        pruned = runtime.pruner.total
    report(samples, readings, args.warmup, args.peek, pruned)


def growth(reference: dict[str, int], size: dict[str, int]) -> tuple[float, str]:
    """The largest growth of a relation of at least 1 MB at the reference, and its name."""
    judged = [(size.get(n, 0) / ref - 1, n) for n, ref in reference.items() if ref >= MB]
    return max(judged, default=(0.0, "-"))


def envelope(readings: list[Reading], start: float, end: float) -> dict[str, int]:
    """Each relation's largest size among the readings from minute ``start`` to ``end``."""
    peaks: dict[str, int] = {}
    for minute, size in readings:
        if start - 1e-6 <= minute <= end + 1e-6:
            for name, value in size.items():
                peaks[name] = max(peaks.get(name, 0), value)
    return peaks


def report(
    samples: list[Sample], readings: list[Reading], warmup: float, peek: float, pruned: Any
) -> None:
    reference = next(s for s in samples if s[0] >= warmup - 1e-6)
    last = samples[-1]
    print(
        f"\npruned {pruned.jobs:,} jobs, {pruned.runs:,} runs ({pruned.run_jobs:,} of their "
        f"jobs), {pruned.attempts:,} attempts, {pruned.events:,} events"
    )
    print(f"\n{'relation':32} {'MB at ' + format(reference[0], '.0f') + ' min':>12} "
          f"{'MB at end':>10} {'end/ref':>8}")  # fmt: skip
    for name in sorted(last[2]):
        ref, end = reference[2].get(name, 0), last[2][name]
        ratio = end / ref if ref else float("inf")
        note = "" if ref >= MB else "  (under 1 MB: not judged)"
        print(f"{name:32} {ref / MB:12.1f} {end / MB:10.1f} {ratio:8.2f}{note}")
    print(f"\ngrowth from {reference[0]:.0f} min, relations of 1 MB or more:")
    print(f"{'min':>6} {'jobs/s':>8} {'MB':>8} {'largest growth':>15}  relation")
    for minute, rate, size in samples:
        if minute >= reference[0] - 1e-6:
            most, name = growth(reference[2], size)
            print(f"{minute:6.1f} {rate:8.0f} {sum(size.values()) / MB:8.1f} {most:15.1%}  {name}")
    rates = [s[1] for s in samples if s[0] >= reference[0] - 1e-6]
    first = envelope(readings, reference[0], reference[0] + warmup)
    final = envelope(readings, last[0] - warmup, last[0])
    print(f"\npeaks of the readings (every {peek:g} s):")
    print(f"{'relation':32} {'peak MB, ref':>13} {'peak MB, end':>13} {'ratio':>7}")
    for name in sorted(final):
        ref, end = first.get(name, 0), final[name]
        ratio = end / ref if ref else float("inf")
        print(f"{name:32} {ref / MB:13.1f} {end / MB:13.1f} {ratio:7.2f}")
    most, name = growth(first, final)
    print(
        f"\nat the end: largest growth of a peak over {warmup:g} min {most:.1%} ({name}; "
        f"{'within' if most <= TOLERANCE else 'OUTSIDE'} {TOLERANCE:.0%}); jobs/s after the "
        f"reference: min {min(rates):.0f}, max {max(rates):.0f}, last/first "
        f"{rates[-1] / rates[0]:.2f}"
    )


if __name__ == "__main__":
    main()
