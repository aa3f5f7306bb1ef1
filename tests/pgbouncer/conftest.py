"""Fixtures for the PgBouncer tests: a real PgBouncer in transaction pooling mode.

``pgbouncer`` starts one ``pgbouncer`` process per session in front of the test server
(``runledger.testing.start_pgbouncer``) and stops it in teardown. Without the binary the tests
fail when ``CI`` is set (CI installs Debian's ``pgbouncer`` package) and skip, saying so,
otherwise. ``bouncer_dsn`` is the test's own database reached through it; ``via_bouncer``
opens a connection there as docs/operations.md recommends for a PgBouncer older than 1.21
(no prepared statements).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from runledger.testing import PgBouncer, PgBouncerUnavailableError, TestServer, start_pgbouncer


@pytest.fixture(scope="session")
def pgbouncer(pg_server: TestServer) -> Iterator[PgBouncer]:
    try:
        bouncer = start_pgbouncer(pg_server, pool_mode="transaction")
    except PgBouncerUnavailableError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and PgBouncer cannot run: {err}")
        pytest.skip(str(err))
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def bouncer_dsn(pgbouncer: PgBouncer, dsn: str) -> str:
    """The test's own database, through PgBouncer."""
    return pgbouncer.dsn_for(str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]))


@pytest.fixture
def via_bouncer(bouncer_dsn: str) -> Iterator[Callable[..., psycopg.Connection[Any]]]:
    """``via_bouncer(**kwargs)``: a connection through PgBouncer, closed after the test."""
    opened: list[psycopg.Connection[Any]] = []

    def connect(**kwargs: Any) -> psycopg.Connection[Any]:
        conn = psycopg.connect(bouncer_dsn, prepare_threshold=None, **kwargs)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def admin(pgbouncer: PgBouncer) -> Callable[[str], list[dict[str, Any]]]:
    """``admin("show pools")``: rows of a PgBouncer admin console command, as dicts."""

    def run(command: str) -> list[dict[str, Any]]:
        with psycopg.connect(pgbouncer.dsn_for("pgbouncer"), autocommit=True) as conn:
            # The console speaks the simple query protocol only: bind on the client side.
            cur = psycopg.ClientCursor(conn)
            cur.execute(command)
            names = [column.name for column in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    return run
