"""Fixtures: one test server and migrated template per session, one cloned database per test.

See runledger.testing for how the server is chosen (RUNLEDGER_TEST_DSN, RUNLEDGER_TEST_DOCKER=1,
RUNLEDGER_TEST_PG_VERSION=13..18, else an embedded server started and stopped by the session).

``@pytest.mark.min_server_version(14, reason=...)`` skips a test on an older server: for tests
that observe something the older server cannot show (runledger itself supports every major the
README names).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from runledger.testing import (
    ServerUnavailableError,
    TemplateDatabases,
    TestServer,
    start_test_server,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    try:
        server = start_test_server()
    except ServerUnavailableError as err:
        pytest.skip(str(err))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _min_server_version(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("min_server_version")
    if marker is None:
        return
    server: TestServer = request.getfixturevalue("pg_server")
    with psycopg.connect(server.dsn) as admin:
        version = admin.info.server_version
    if version < marker.args[0] * 10000:
        pytest.skip(
            f"needs PostgreSQL {marker.args[0]}+, the server is {version // 10000}: "
            f"{marker.kwargs.get('reason', '')}"
        )


@pytest.fixture(scope="session")
def databases(pg_server: TestServer) -> Iterator[TemplateDatabases]:
    dbs = TemplateDatabases(pg_server)
    dbs.create_template()
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture
def dsn(databases: TemplateDatabases) -> Iterator[str]:
    """The DSN of a freshly migrated database of this test's own."""
    with databases.database() as dsn:
        yield dsn


@pytest.fixture
def empty_database(databases: TemplateDatabases) -> Iterator[str]:
    """The DSN of a database of this test's own without any schema (dropped after)."""
    with databases.empty() as dsn:
        yield dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection (not autocommit) to the test's database; rolled back and closed after."""
    with psycopg.connect(dsn) as connection:
        yield connection
        if not connection.closed:
            connection.rollback()


@pytest.fixture
def autocommit_conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection
