"""The CLI's connection to the ledger: which DSN, a clear refusal when it cannot connect or
the schema is not migrated, and one consistent snapshot per read command."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psycopg

from runledger.postgres.migrate import check_schema

APPLICATION_NAME = "runledger-cli"


class CliError(Exception):
    """A refusal to report on stderr as ``runledger: <message>``, with exit code 1."""


def dsn(args: argparse.Namespace) -> str:
    """The DSN from ``--dsn``, else ``$RUNLEDGER_DSN``, else ``$DATABASE_URL``.

    Raises:
        CliError: none of them is set.
    """
    found = (
        getattr(args, "dsn", None)
        or os.environ.get("RUNLEDGER_DSN")
        or os.environ.get("DATABASE_URL")
    )
    if not found:
        raise CliError("no database given; pass --dsn or set RUNLEDGER_DSN or DATABASE_URL")
    return str(found)


def _one_line(err: Exception) -> str:
    # libpq's messages carry newlines and tabs ("\n\tIs the server running ...").
    return " ".join(str(err).split())


def connect(args: argparse.Namespace) -> psycopg.Connection[Any]:
    """An autocommit connection to the command's database; blocks up to 10 s to connect.

    Raises:
        CliError: the DSN does not parse, or the server cannot be reached or refuses us.
    """
    try:
        return psycopg.connect(
            dsn(args), autocommit=True, connect_timeout=10, application_name=APPLICATION_NAME
        )
    except psycopg.ProgrammingError as err:
        raise CliError(f"invalid DSN: {_one_line(err)}") from err
    except psycopg.OperationalError as err:
        raise CliError(f"cannot connect to the database: {_one_line(err)}") from err


@contextlib.contextmanager
def reading(args: argparse.Namespace) -> Iterator[psycopg.Connection[Any]]:
    """A connection inside one read-only REPEATABLE READ transaction, schema checked.

    Every query of a read command sees the same snapshot, and ``now()`` is the same instant
    throughout (the one ages are measured from).

    Raises:
        CliError: as ``connect``.
        SchemaNotMigrated: the schema is missing or older (the message says to migrate).
        MigrationError: the database was migrated by another version of runledger.
    """
    with connect(args) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            check_schema(conn)
            yield conn


@contextlib.contextmanager
def writing(args: argparse.Namespace) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection, schema checked: each store call runs its own transaction.

    Raises:
        CliError, SchemaNotMigrated, MigrationError: as ``reading``.
    """
    with connect(args) as conn:
        check_schema(conn)
        yield conn
