"""What period segments of the history would cost the queue, and save the pruner: a study of
layouts runledger does not ship (issue 16, section 3: "deleting a whole period of history
should be cheap; dropping a partition is the model").

Four of the five rows a finished no-op job leaves are its attempt and its three events,
written by the enqueue, the claim and the completion. Dropping a period whole means those
rows sit in a table per period. On top of the newest schema, with no statement of the
runtime changed, the layouts (``--layouts``) are:

- ``rows``: today's.
- ``events-seg``: ``runledger.events`` LIST-partitioned by a new column ``seg``, one
  partition a day; a row takes ``seg`` from the column's DEFAULT, a constant each new day
  changes (DDL, and a moment's lock on the table, once a day).
- ``events-time``: ``runledger.events`` RANGE-partitioned by ``occurred_at``, a partition a
  day, made ahead: the server routes each row by a key it already has.
- ``both-time``: the same, and ``runledger.job_attempts`` RANGE-partitioned by
  ``lease_token`` (time-ordered, led by the claim's Unix milliseconds).

The table laid out becomes partition ``s0`` of a new parent of the same name. A partitioned
table's unique indexes must include its key, so ``events.id`` is indexed but no longer
unique on its own. The CHECK constraints of the two tables are left out (they cost CPU, not
buffers or WAL). ``runledger.job_history`` stays one table in every layout (an inheritance
child cannot be partitioned): its row per job is deleted row by row.

Each layout has a database holding the same history: ``--days`` days of ``--per-day``
finished no-op jobs, ``--dead-letters`` percent of them failed, each job in ``job_history``
with its attempt and three events; the benchmark's own rows go into a partition after the
history's. In turns, ``--rounds`` times, each drains ``--jobs`` queued no-op jobs with
``Runtime(concurrency=16, prefetch=64, retention=None)`` (``history.py``'s drain figure:
jobs/s and per job the buffers the database touched, rows written, commits and WAL bytes).
Then, once in each and after a checkpoint, the oldest day's succeeded jobs are deleted while
its dead letters are kept (retention keeps them longer): in ``rows`` by the pruner's own
batches (``prune_jobs``); in ``events-seg`` by copying the dead letters' events to the newest
partition (with ``seg`` set to it), dropping the day's partition, then the same batches for
the rows left (jobs and attempts); in the ``*-time`` layouts a row cannot leave its day, so
with dead letters the day's partitions stay and the batches delete row by row (with
``--dead-letters 0`` they are dropped first).

    python benchmarks/segments.py                      # a new embedded server
    python benchmarks/segments.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/segments.py --quick              # 8 days of 20,000 jobs, one round
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from _postgres import bench_server, scratch_database
from history import JOB_TYPE, QUEUE, QUEUE_JOBS, checkpoint

from runledger.core.status import JobStatus
from runledger.postgres import retention

Conn = psycopg.Connection[Any]

KEPT_QUEUE = "segments.kept"
"""The queue of the kept history: nothing claims from it."""

# Two ways to pick a row's segment. "seg": LIST partitions by a new column seg, whose
# DEFAULT (a constant) each new day changes: a DDL statement and a moment's lock on the
# table a day. "time": RANGE partitions by a key the row already has and that grows with
# time: events by occurred_at, attempts by lease_token (time-ordered, led by the Unix
# milliseconds), so that the server routes each row with no DEFAULT to change; the
# partitions of coming days are made ahead.
KEYS = {"events": "occurred_at", "job_attempts": "lease_token"}
# {table} becomes partition s0 of a new parent of the same name.
SEGMENT_TABLE = """
alter table runledger.{table} rename to {table}_s0;
alter table runledger.{table}_s0 alter column id drop identity;
{seg_column}
create sequence runledger.{table}_id;
create table runledger.{table} (like runledger.{table}_s0 including defaults)
    partition by {partitioning};
alter table runledger.{table} alter column id set default nextval('runledger.{table}_id');
alter table runledger.{table} attach partition runledger.{table}_s0 for values {s0};
"""
SEG_COLUMN = "alter table runledger.{table}_s0 add column seg integer not null default 0;"
# A partitioned table's unique indexes must include its key: events.id is unique by its
# sequence alone; lease_token stays unique where it is the key.
INDEXES = {
    "events": """
create index events_segment_id on runledger.events (id);
create index events_segment_job on runledger.events (job_id, id) where job_id is not null;
create index events_segment_run on runledger.events (workflow_run_id, id)
    where workflow_run_id is not null;
create index events_segment_queue on runledger.events (queue, id) where queue is not null;
""",
    "job_attempts": """
create index job_attempts_segment_id on runledger.job_attempts (id);
create index job_attempts_segment_job on runledger.job_attempts (job_id, attempt);
create unique index job_attempts_segment_token on runledger.job_attempts ({token});
""",
}
# The lease token a claim at time t makes (runledger.time_ordered_uuid()), and the lowest
# token of t's millisecond: a partition bound.
TOKENS = r"""
create function public.bench_token(t timestamptz, tail text) returns uuid
    language sql
as $$
    select overlay(tail placing regexp_replace(
                       lpad(to_hex((extract(epoch from t) * 1000)::bigint), 12, '0'),
                       '^(.{8})', '\1-') || '-7'
                   from 1 for 15)::uuid
$$;
"""
# A new segment: a partition of each segmented table (attempts with room for the HOT update
# that finishes one); "seg" then points the DEFAULT of new rows at it.
OPEN_SEGMENT = """
create table runledger.{table}_s{n} partition of runledger.{table} for values {bounds}
    {storage};
"""
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
# Before a day's segment is dropped, the rows of the jobs that outlive it (here the dead
# letters, which retention keeps longer) are copied to the newest segment ("seg" only): a
# copy rather than an UPDATE of seg, which would write to every page of the day that holds
# such a row, after a checkpoint a full-page image each, only to drop them.
COPY_SURVIVORS = """
insert into runledger.{table} ({columns}, seg)
select {columns}, %(newest)s
from runledger.{table}_s1 as r
where exists (select from runledger.jobs as j
              where j.id = r.job_id
                and (j.status <> 'succeeded' or j.finished_at >= now() - %(keep)s))
"""
COLUMNS = """
select string_agg(quote_ident(attname), ', ' order by attnum)
from pg_attribute
where attrelid = %s::regclass and attnum > 0 and not attisdropped and attname <> 'seg'
"""
SET_SEGMENT = "alter table runledger.{table} alter column seg set default {n}"
DROP_SEGMENT = "drop table runledger.{table}_s{n}"

# One day of history: finished no-op jobs, oldest day first (so that ids follow the days),
# every {every}th a dead letter, each with its attempt and the three events a runtime writes
# for it, all dated within the day: [t0 - age days, t0 - (age - 1) days).
KEEP_DAY = """
with jobs as (
    insert into runledger.job_history
        (id, queue, job_type, status, attempt, max_attempts, run_at, started_at, output,
         created_at, updated_at, finished_at)
    select runledger.time_ordered_uuid(), %(queue)s, %(job_type)s, status, 1, 1,
           t, t, '{}', t, t, t
    from (
        select %(t0)s - interval '1 day' * (%(age)s - (i - 1)::float8 / %(count)s) as t,
               case when %(every)s > 0 and i %% %(every)s = 0 then 'failed'
                    else 'succeeded' end as status
        from generate_series(1, %(count)s) as i
    ) as ticks
    returning id, finished_at, status
),
attempts as (
    insert into runledger.job_attempts
        (job_id, attempt, worker, lease_token, started_at, finished_at, outcome)
    select id, 1, 'segments.bench', public.bench_token(finished_at, gen_random_uuid()::text),
           finished_at, finished_at, status
    from jobs
)
insert into runledger.events (kind, job_id, attempt, occurred_at)
select k.kind, j.id, 1, j.finished_at
from jobs as j,
     unnest(array['job.enqueued', 'job.started', 'job.' || j.status]) as k (kind)
"""
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rows": ("", ()),
    "events-seg": ("seg", ("events",)),
    "events-time": ("time", ("events",)),
    "both-time": ("time", ("events", "job_attempts")),
}
"""Today's layout; events in day segments picked by seg, then by time; events and
attempts by time."""
HIGHEST = "select coalesce(max(id), 0) from runledger.{table}"
SIZES = """
select pg_size_pretty(sum(pg_total_relation_size(c.oid)))
from pg_class as c join pg_namespace as n on n.oid = c.relnamespace
where n.nspname = 'runledger' and c.relkind = 'r'
"""
WAL = "select pg_current_wal_lsn()"
WAL_SINCE = "select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)"


class Layout:
    """A scratch database in one layout, with the history filled."""

    def __init__(
        self,
        name: str,
        dsn: str,
        keyed: str,
        segmented: tuple[str, ...],
        args: argparse.Namespace,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.keyed = keyed
        """How a row's segment is picked: "seg", "time", or "" for today's layout."""
        self.segmented = segmented
        """The tables laid out in segments."""
        self.days = args.days
        self.every = round(100 / args.dead_letters) if args.dead_letters else 0
        """Every how many jobs of the history one is a dead letter (0: none)."""
        self.marks = {"events": 0, "job_attempts": 0}
        self.t0 = datetime.datetime.now(datetime.UTC)
        """The end of the history's last day: the benchmark's own rows come after it."""

    def fill(self, per_day: int) -> None:
        """Lay out the migrated database, fill the history a day at a time, settle, checkpoint."""
        started = time.monotonic()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(TOKENS)
            for table in self.segmented:
                conn.execute(self.segment_table(table))
                token = "lease_token, seg" if self.keyed == "seg" else "lease_token"
                conn.execute(INDEXES[table].format(token=token))
            for day in range(1, self.days + 1):
                self.open_segment(conn, day)
                conn.execute(
                    KEEP_DAY,
                    {"queue": KEPT_QUEUE, "job_type": JOB_TYPE, "count": per_day,
                     "age": self.days - day + 1, "t0": self.t0, "every": self.every},
                )  # fmt: skip
            # the benchmark's own rows go into a segment after the history's
            self.open_segment(conn, self.days + 1)
            for table in self.marks:
                row = conn.execute(HIGHEST.format(table=table)).fetchone()
                assert row is not None
                self.marks[table] = int(row[0])
            conn.execute("vacuum (analyze) runledger.job_history")
            conn.execute("vacuum (analyze) runledger.job_attempts, runledger.events")
            size = conn.execute(SIZES).fetchone()
            assert size is not None
            checkpoint(conn)
        print(
            f"  {self.name}: {self.days} days of {per_day:,} jobs in "
            f"{time.monotonic() - started:.0f} s ({size[0]} of tables and indexes)",
            flush=True,
        )

    def bound(self, table: str, day: int) -> str:
        """The lowest key of segment ``day`` (day 1 is the oldest), as an SQL expression."""
        t = f"'{self.t0.isoformat()}'::timestamptz - interval '{self.days - day + 1} days'"
        return t if table == "events" else f"public.bench_token({t}, '{ZERO_UUID}')"

    def segment_table(self, table: str) -> str:
        """The DDL that makes ``table`` segment 0 of a partitioned table of the same name."""
        if self.keyed == "seg":
            return SEGMENT_TABLE.format(
                table=table, seg_column=SEG_COLUMN.format(table=table),
                partitioning="list (seg)", s0="in (0)",
            )  # fmt: skip
        return SEGMENT_TABLE.format(
            table=table, seg_column="", partitioning=f"range ({KEYS[table]})",
            s0=f"from (minvalue) to ({self.bound(table, 1)})",
        )  # fmt: skip

    def open_segment(self, conn: Conn, n: int) -> None:
        """Open segment ``n`` of each segmented table (the last one open-ended)."""
        for table in self.segmented:
            if self.keyed == "seg":
                bounds = f"in ({n})"
            else:
                upper = "maxvalue" if n > self.days else self.bound(table, n + 1)
                bounds = f"from ({self.bound(table, n)}) to ({upper})"
            storage = "with (fillfactor = 85)" if table == "job_attempts" else ""
            conn.execute(OPEN_SEGMENT.format(table=table, n=n, bounds=bounds, storage=storage))
            if self.keyed == "seg":
                conn.execute(SET_SEGMENT.format(table=table, n=n))

    def prepare(self, jobs: int) -> None:
        """Forget the benchmark's own rows (not the history), queue ``jobs`` new ones, settle
        and checkpoint."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("delete from runledger.jobs where queue = %s", (QUEUE,))
            for table, mark in self.marks.items():
                if table in self.segmented:
                    conn.execute(f"truncate runledger.{table}_s{self.days + 1}")
                else:
                    conn.execute(f"delete from runledger.{table} where id > %s", (mark,))
            conn.execute("vacuum runledger.jobs, runledger.job_history")
            conn.execute("vacuum runledger.job_attempts, runledger.events")
            conn.execute(QUEUE_JOBS, {"queue": QUEUE, "job_type": JOB_TYPE, "count": jobs})
            conn.execute("vacuum (analyze) runledger.jobs, runledger.job_attempts")
            conn.execute("vacuum (analyze) runledger.events")
            checkpoint(conn)

    def drain(self, jobs: int, timeout: float) -> dict[str, float]:
        """``history.py``'s drain figure, in a child process."""
        self.prepare(jobs)
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("history.py")), "--jobs", str(jobs),
             "--timeout", str(timeout), "--child", "drain", self.dsn],
            stdout=subprocess.PIPE, text=True, check=True,
        )  # fmt: skip
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def copy_survivors(self, conn: Conn, table: str, keep: datetime.timedelta) -> int:
        """Copy the rows of day 1's jobs that outlive it to the newest segment; how many."""
        row = conn.execute(COLUMNS, (f"runledger.{table}",)).fetchone()
        assert row is not None
        statement = COPY_SURVIVORS.format(table=table, columns=row[0])
        return conn.execute(statement, {"newest": self.days + 1, "keep": keep}).rowcount

    def delete_oldest_day(self) -> dict[str, float]:
        """Delete the oldest day of history; seconds, WAL bytes and rows gone."""
        keep = datetime.timedelta(days=self.days - 1)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("delete from runledger.jobs where queue = %s", (QUEUE,))
            checkpoint(conn)
            row = conn.execute(WAL).fetchone()
            assert row is not None
            lsn = row[0]
            started = time.monotonic()
            dropped = 0.0
            copied = 0
            # keyed by time a row cannot leave its day: dead letters hold the day's segments
            held = self.keyed == "time" and self.every > 0
            if self.segmented and not held:
                with conn.transaction():
                    for table in self.segmented:
                        if self.keyed == "seg":
                            copied += self.copy_survivors(conn, table, keep)
                        conn.execute(DROP_SEGMENT.format(table=table, n=1))
                dropped = time.monotonic() - started
            jobs = attempts = events = 0
            while True:
                with conn.transaction():
                    pruned = retention.prune_jobs(conn, JobStatus.SUCCEEDED, keep)
                if not pruned.jobs:
                    break
                jobs += pruned.jobs
                attempts += pruned.attempts
                events += pruned.events
            took = time.monotonic() - started
            wal = conn.execute(WAL_SINCE, (lsn,)).fetchone()
            assert wal is not None
        return {
            "seconds": took,
            "drop_seconds": dropped,
            "copied": float(copied),
            "wal_bytes": float(wal[0]),
            "jobs": float(jobs),
            "attempts": float(attempts),
            "events": float(events),
        }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", maxsplit=1)[0],
        epilog=__doc__.split("\n\n", maxsplit=1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dsn", help="server (default: $RUNLEDGER_BENCH_DSN, else embedded)")
    parser.add_argument("--days", type=int, help="days of history (partitions), default 31")
    parser.add_argument("--per-day", type=int, help="finished jobs a day, default 100,000")
    parser.add_argument("--jobs", type=int, help="jobs drained per figure, default 100,000")
    parser.add_argument("--rounds", type=int, help="rounds in turns, default 3")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per drain")
    parser.add_argument(
        "--dead-letters", type=float, default=2.0,
        help="percent of the history's jobs that failed and are kept longer (default 2)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="8 days of 20,000, one round")
    parser.add_argument(
        "--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS),
        help="the layouts to measure (default: all; rows always)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    defaults = (8, 20_000, 20_000, 1) if args.quick else (31, 100_000, 100_000, 3)
    for name, default in zip(("days", "per_day", "jobs", "rounds"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main() -> None:
    args = parse_args()
    with bench_server(args.dsn) as server, contextlib.ExitStack() as scratch:
        layouts = []
        for name, (keyed, segmented) in LAYOUTS.items():
            if name != "rows" and name not in args.layouts:
                continue
            dsn = scratch.enter_context(scratch_database(server))
            layout = Layout(name, dsn, keyed, segmented, args)
            layout.fill(args.per_day)
            layouts.append(layout)
        results: dict[str, list[dict[str, float]]] = {x.name: [] for x in layouts}
        for n in range(args.rounds):
            for layout in layouts if n % 2 == 0 else layouts[::-1]:
                figure = layout.drain(args.jobs, args.timeout)
                results[layout.name].append(figure)
                print(
                    f"  round {n + 1} {layout.name:>11}: "
                    f"{figure['jobs_per_second']:8,.0f} jobs/s  "
                    f"{figure['buffers']:6.1f} buffers  {figure['rows']:5.2f} rows  "
                    f"{figure['commits']:5.2f} commits  {figure['wal_bytes']:6,.0f} B WAL "
                    "per job",
                    flush=True,
                )
        print(f"\ndrain of {args.jobs:,} jobs beside {args.days} days of "
              f"{args.per_day:,}, median of {args.rounds}:")  # fmt: skip
        fields = ("jobs_per_second", "buffers", "rows", "commits", "wal_bytes")
        medians = {
            name: {f: statistics.median(r[f] for r in runs) for f in fields}
            for name, runs in results.items()
        }
        print(f"  {'':>11}  {'jobs/s':>8}  {'buffers':>7}  {'rows':>5}  {'commits':>7}  "
              f"{'WAL B':>6}  per job")  # fmt: skip
        for name, m in medians.items():
            print(f"  {name:>11}  {m['jobs_per_second']:8,.0f}  {m['buffers']:7.1f}  "
                  f"{m['rows']:5.2f}  {m['commits']:7.2f}  {m['wal_bytes']:6,.0f}")  # fmt: skip
        for name in list(medians)[1:]:
            ratio = medians[name]["jobs_per_second"] / medians["rows"]["jobs_per_second"]
            print(f"  {name} / rows: {ratio:.3f} jobs/s")
        print(
            f"\ndeleting the oldest day's succeeded jobs ({args.per_day:,} jobs, "
            f"{args.dead_letters:g} % dead letters kept), after a checkpoint:"
        )
        for layout in layouts:
            d = layout.delete_oldest_day()
            print(
                f"  {layout.name:>11}: {d['seconds']:5.2f} s (copy and drop "
                f"{d['drop_seconds']:.3f} s)  {d['wal_bytes'] / 1e6:5.1f} MB WAL  rows copied: "
                f"{d['copied']:,.0f}, deleted: {d['jobs']:,.0f} "
                f"jobs, {d['attempts']:,.0f} attempts, {d['events']:,.0f} events",
                flush=True,
            )


if __name__ == "__main__":
    main()
