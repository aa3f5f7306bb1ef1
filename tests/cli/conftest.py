"""Fixtures for the operator CLI's tests (the helpers they use live in ``console.py``).

``cli(*args)`` runs the command with ``RUNLEDGER_DSN`` set to the test's database and no other
RUNLEDGER_* setting from the environment; ``cli.bare(*args, env=...)`` runs it without a DSN.
``ledger`` makes job history on the test's database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from console import Cli, Ledger
from psycopg import sql

from runledger.testing import TemplateDatabases


@pytest.fixture
def cli(dsn: str) -> Cli:
    """``cli("jobs", "list")``: the console script on this test's database."""
    return Cli(dsn)


@pytest.fixture
def ledger(autocommit_conn: psycopg.Connection[Any]) -> Ledger:
    """A ``Ledger`` on the test's database."""
    return Ledger(autocommit_conn)


@pytest.fixture
def unmigrated_dsn(databases: TemplateDatabases) -> Iterator[str]:
    """A database on the test server without the runledger schema (dropped after)."""
    name = f"runledger_cli_noschema_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(databases.server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield databases.server.dsn_for(name)
    finally:
        with psycopg.connect(databases.server.dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )
