"""A held connection: taken from the pool once, autocommit with its session settings while
held, replaced after it breaks, and back in the pool as it was found."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import runledger
from runledger.postgres.attempts import CLAIM_PLAIN_STATEMENT, GENERIC_PLAN_SESSION, claim
from runledger.postgres.held import HeldConnection

PLAN_COUNTS = """
select generic_plans, custom_plans from pg_prepared_statements where statement = %s
"""


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool[Any]]:
    """One connection, so that whatever the holder hands back is the next one taken."""
    with ConnectionPool(dsn, min_size=1, max_size=1, timeout=5, kwargs={"autocommit": False}) as p:
        yield p


def backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def setting(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute("select current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_it_is_held_between_uses_in_autocommit_with_its_settings(
    pool: ConnectionPool[Any],
) -> None:
    held = HeldConnection(pool, settings=GENERIC_PLAN_SESSION)
    with held.autocommit() as conn:
        first = backend_pid(conn)
        assert conn.autocommit
        assert setting(conn, "plan_cache_mode") == "force_generic_plan"
        assert setting(conn, "jit") == "off"
    # the pool has one connection and the holder keeps it
    assert pool.get_stats()["pool_available"] == 0
    with held.autocommit() as conn:
        assert backend_pid(conn) == first
    held.close()


def test_it_goes_back_to_the_pool_as_it_was_found(pool: ConnectionPool[Any]) -> None:
    with pool.connection() as conn:
        first = backend_pid(conn)
    held = HeldConnection(pool, settings=GENERIC_PLAN_SESSION)
    with held.autocommit() as conn:
        assert backend_pid(conn) == first
    held.close()
    held.close()  # idempotent
    with pool.connection() as conn:
        assert backend_pid(conn) == first
        assert not conn.autocommit
        assert setting(conn, "plan_cache_mode") == "auto"
        assert setting(conn, "jit") == "on"


def test_a_statement_commits_by_itself_and_a_transaction_rolls_back_on_error(
    pool: ConnectionPool[Any], observer: psycopg.Connection[Any]
) -> None:
    observer.execute("create table marks (n int)")
    held = HeldConnection(pool)
    with held.autocommit() as conn:
        conn.execute("insert into marks values (1)")
        seen = observer.execute("select count(*) from marks").fetchone()
        assert seen == (1,)  # committed before the block ends
    with pytest.raises(RuntimeError), held.transaction() as conn:
        conn.execute("insert into marks values (2)")
        raise RuntimeError("give up")
    with held.transaction() as conn:
        conn.execute("insert into marks values (3)")
    held.close()
    assert observer.execute("select n from marks order by n").fetchall() == [(1,), (3,)]


def wait_gone(observer: psycopg.Connection[Any], pid: int) -> None:
    """Wait until the server no longer lists backend ``pid`` (its last message is sent)."""
    deadline = time.monotonic() + 10
    while observer.execute(
        "select exists (select from pg_stat_activity where pid = %s)", (pid,)
    ).fetchone() != (False,):
        assert time.monotonic() < deadline, f"backend {pid} still there after 10 s"
        time.sleep(0.01)


def test_a_connection_the_server_closed_while_held_is_replaced_before_use(
    pool: ConnectionPool[Any], observer: psycopg.Connection[Any]
) -> None:
    held = HeldConnection(pool, settings=GENERIC_PLAN_SESSION)
    with held.autocommit() as conn:
        dead = backend_pid(conn)
    observer.execute("select pg_terminate_backend(%s)", (dead,))
    wait_gone(observer, dead)

    # Told by the idle socket, without a failed statement; the pool opens another.
    with held.autocommit() as conn:
        assert backend_pid(conn) != dead
        assert setting(conn, "plan_cache_mode") == "force_generic_plan"
    held.close()


def test_a_connection_that_breaks_in_use_is_given_back_and_the_next_use_takes_a_fresh_one(
    pool: ConnectionPool[Any], observer: psycopg.Connection[Any]
) -> None:
    held = HeldConnection(pool, settings=GENERIC_PLAN_SESSION)
    with held.autocommit() as conn:
        dead = backend_pid(conn)
    with pytest.raises(psycopg.OperationalError), held.autocommit() as conn:
        # Ended while it runs a statement: the statement fails and the holder lets it go.
        conn.execute("select pg_terminate_backend(pg_backend_pid())")
    with held.autocommit() as conn:
        assert backend_pid(conn) != dead
        assert setting(conn, "plan_cache_mode") == "force_generic_plan"
    held.close()


@pytest.mark.min_server_version(14, reason="pg_prepared_statements counts plans from 14")
def test_an_autocommit_claim_runs_the_generic_plan_the_session_asks_for(
    pool: ConnectionPool[Any], conn: psycopg.Connection[Any], count: Any
) -> None:
    runledger.enqueue_many(conn, [runledger.Job("t")] * 12)
    conn.commit()
    held = HeldConnection(pool, settings=GENERIC_PLAN_SESSION)
    with held.autocommit() as claimer:
        assert claimer.prepare_threshold is not None
        for _ in range(12):
            jobs = claim(
                claimer,
                worker="w",
                queues=["default"],
                job_types=["t"],
                limit=1,
                lease_seconds=30,
                session_generic_plan=True,
            )
            assert len(jobs) == 1
            # committed by the statement itself: another session sees it running
            assert count("jobs", "id = %s and status = 'running'", (jobs[0].id,)) == 1
        row = claimer.execute(PLAN_COUNTS, (CLAIM_PLAIN_STATEMENT.text,)).fetchone()
        assert row is not None
        generic, custom = row
        assert custom == 0
        assert generic >= 12 - claimer.prepare_threshold
    held.close()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


LOOKUP = "select v from grows where id = %s"


def lookup_plan(conn: psycopg.Connection[Any]) -> str:
    """The plan ``conn``'s prepared ``LOOKUP`` runs with now (its generic plan)."""
    row = conn.execute(
        "select name from pg_prepared_statements where statement like 'select v from grows%%'"
    ).fetchone()
    assert row is not None, "LOOKUP was not prepared"
    plan = conn.execute(f"explain (costs off) execute {row[0]}(1)").fetchall()
    return "\n".join(line for (line,) in plan)


def grow_after_planning(held: HeldConnection, observer: psycopg.Connection[Any]) -> None:
    """Plan ``LOOKUP`` on a table of one page, then make the table a thousand times bigger."""
    # No autovacuum: an ANALYZE of its own would make the plan again behind the test's back.
    observer.execute(
        "create table grows (id int primary key, v text) with (autovacuum_enabled = off)"
    )
    observer.execute("insert into grows select n, 'v' from generate_series(1, 20) as n")
    observer.execute("analyze grows")
    with held.autocommit() as conn:
        assert conn.prepare_threshold is not None
        for _ in range(conn.prepare_threshold + 1):
            conn.execute(LOOKUP, (1,))
        assert "Seq Scan on grows" in lookup_plan(conn)
    observer.execute("insert into grows select n, 'v' from generate_series(21, 20000) as n")


def test_plans_made_on_a_small_table_are_made_again_as_it_grows(
    pool: ConnectionPool[Any], observer: psycopg.Connection[Any]
) -> None:
    clock = Clock()
    held = HeldConnection(pool, settings=GENERIC_PLAN_SESSION, clock=clock)
    grow_after_planning(held, observer)

    clock.now = 0.5  # before the first replan: the plan of the small table stays
    with held.autocommit() as conn:
        assert "Seq Scan on grows" in lookup_plan(conn)
    clock.now = 1.0
    with held.autocommit() as conn:
        conn.execute(LOOKUP, (1,))
        assert "Index Scan using grows_pkey" in lookup_plan(conn)
    held.close()


def test_without_replanning_the_plan_of_the_small_table_stays(
    pool: ConnectionPool[Any], observer: psycopg.Connection[Any]
) -> None:
    clock = Clock()
    held = HeldConnection(pool, settings=GENERIC_PLAN_SESSION, replan=False, clock=clock)
    grow_after_planning(held, observer)

    clock.now = 120.0
    with held.autocommit() as conn:
        conn.execute(LOOKUP, (1,))
        assert "Seq Scan on grows" in lookup_plan(conn)
    held.close()
