"""Fixtures for the store's integration tests: a second connection, row counts, empty databases.

``conn`` (the caller's connection, not autocommit) and ``dsn`` come from ``tests/conftest.py``.
``observer`` is a second, autocommit connection to the same database: what it sees is what
other sessions see, committed rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

Counter = Callable[..., int]


@pytest.fixture
def observer(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session on the test's database (autocommit): sees committed rows only."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def count(observer: psycopg.Connection[Any]) -> Counter:
    """``count("jobs", "status = %s", ("queued",))``: committed rows of a runledger table."""

    def run(table: str, where: str = "true", params: tuple[Any, ...] = ()) -> int:
        query = sql.SQL("select count(*) from runledger.{} where {}").format(
            sql.Identifier(table), sql.SQL(where)
        )
        row = observer.execute(query, params).fetchone()
        assert row is not None
        return int(row[0])

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this directory ``db`` (they all need the PostgreSQL server)."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.db)
