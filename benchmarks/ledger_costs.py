"""What one job costs the database, in units machine noise does not move: transactions, row
writes of ``runledger.jobs`` (and how many were HOT), WAL bytes, per job.

Drains ``--jobs`` no-op jobs with one in-process runtime per configuration on a scratch
database and prints the counters' growth divided by the number of jobs. Runs whatever
``runledger`` is first on ``sys.path``: run it from two checkouts (``PYTHONPATH=<checkout>``)
to compare two versions side by side. WAL is counted for the whole server: give ``--dsn``
only for a server nothing else writes to (the default, an embedded server, is its own).

    python benchmarks/ledger_costs.py --setups 1:0,4:4,16:64 --jobs 20000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import psycopg
from _postgres import bench_server, scratch_database  # type: ignore[import-not-found]

import runledger

COUNTERS = """
select (select xact_commit from pg_stat_database where datname = current_database()),
       (select n_tup_upd from pg_stat_user_tables where relid = 'runledger.jobs'::regclass),
       (select n_tup_hot_upd from pg_stat_user_tables
        where relid = 'runledger.jobs'::regclass),
       pg_current_wal_lsn()
"""
WAL_BYTES = "select pg_wal_lsn_diff(%s, %s)"


def counters(conn: psycopg.Connection[Any]) -> tuple[int, int, int, str]:
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(COUNTERS).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), str(row[3])


def measure(dsn: str, concurrency: int, prefetch: int, jobs: int) -> dict[str, float]:
    registry = runledger.Registry()

    @registry.handler("cost.noop", max_attempts=1)
    def noop(ctx: runledger.JobContext, payload: Any) -> Any:
        return None

    with psycopg.connect(dsn, autocommit=True) as conn:
        runledger.enqueue_many(conn, [runledger.Job("cost.noop", {}) for _ in range(jobs)])
        time.sleep(1.0)  # let the statistics collector see the enqueue before the baseline
        before = counters(conn)
        started = time.monotonic()
        with runledger.Runtime(
            dsn, registry, concurrency=concurrency, prefetch=prefetch, poll_interval=0.05,
            scheduler=False,
        ):  # fmt: skip
            while conn.execute(
                "select count(*) from runledger.jobs where status <> 'succeeded'"
            ).fetchone() != (0,):
                time.sleep(0.05)
        took = time.monotonic() - started
        time.sleep(1.0)  # the runtime's last statistics reach the collector
        after = counters(conn)
        wal_row = conn.execute(WAL_BYTES, (after[3], before[3])).fetchone()
        assert wal_row is not None
    return {
        "commits/job": (after[0] - before[0]) / jobs,
        "jobs row writes/job": (after[1] - before[1]) / jobs,
        "of them HOT": (after[2] - before[2]) / max(after[1] - before[1], 1),
        "WAL bytes/job": float(wal_row[0]) / jobs,
        "jobs/s": jobs / took,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="server (default: $RUNLEDGER_BENCH_DSN, else embedded)")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--setups", default="1:0,4:4,16:64", help="C:P configurations")
    args = parser.parse_args()
    print(f"runledger from {Path(runledger.__file__).parent}")
    print(f"{'setup':>8} {'commits/job':>12} {'row writes/job':>15} {'HOT':>6} "
          f"{'WAL B/job':>10} {'jobs/s':>8}")  # fmt: skip
    with bench_server(args.dsn) as server:
        for setup in args.setups.split(","):
            concurrency, prefetch = (int(part) for part in setup.split(":"))
            with scratch_database(server) as dsn:
                m = measure(dsn, concurrency, prefetch, args.jobs)
            print(
                f"{setup:>8} {m['commits/job']:>12.2f} {m['jobs row writes/job']:>15.2f} "
                f"{m['of them HOT']:>6.2f} {m['WAL bytes/job']:>10.0f} {m['jobs/s']:>8.0f}"
            )


if __name__ == "__main__":
    main()
