"""Fixtures for the operator CLI's tests (the helpers they use live in ``console.py``).

``cli(*args)`` runs the command with ``RUNLEDGER_DSN`` set to the test's database and no other
RUNLEDGER_* setting from the environment; ``cli.bare(*args, env=...)`` runs it without a DSN.
``ledger`` makes job history on the test's database.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from console import Cli, Ledger


@pytest.fixture
def cli(dsn: str) -> Cli:
    """``cli("jobs", "list")``: the console script on this test's database."""
    return Cli(dsn)


@pytest.fixture
def ledger(autocommit_conn: psycopg.Connection[Any]) -> Ledger:
    """A ``Ledger`` on the test's database."""
    return Ledger(autocommit_conn)
