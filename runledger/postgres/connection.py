"""Using a caller's connection: refuse unusable ones, open a transaction only on autocommit.

Functions that take the caller's connection never commit, roll back or close it. Inside an
open transaction their writes join it; on an autocommit connection they run in a short
transaction of their own; on an idle connection that is not in autocommit mode they start the
transaction the way any statement would, and the caller's commit carries them.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any, TypeAlias

import psycopg
from psycopg import pq

from runledger.errors import (
    ConnectionNotUsable,
    DatabaseError,
    SchemaNotMigrated,
    TransactionAborted,
)
from runledger.postgres.migrate import latest_version

Conn: TypeAlias = psycopg.Connection[Any]


def check_usable(conn: Conn) -> None:
    """Raise ``ConnectionNotUsable`` or ``TransactionAborted`` if ``conn`` cannot run a query."""
    if not isinstance(conn, psycopg.Connection):
        raise ConnectionNotUsable(
            reason=f"expected a psycopg 3 Connection, got {type(conn).__qualname__}"
        )
    if conn.closed:
        raise ConnectionNotUsable(reason="it is closed")
    status = conn.info.transaction_status
    if status == pq.TransactionStatus.INERROR:
        raise TransactionAborted()
    if status == pq.TransactionStatus.UNKNOWN:
        raise ConnectionNotUsable(reason="its state is unknown (the server connection broke)")
    if status == pq.TransactionStatus.ACTIVE:
        raise ConnectionNotUsable(reason="another query is running on it")


@contextlib.contextmanager
def _translated(conn: Conn) -> Iterator[None]:
    """psycopg errors of the block as runledger's: a broken connection, a missing schema, or
    a refusal."""
    try:
        yield
    except psycopg.OperationalError as err:
        if conn.closed or conn.broken:
            raise ConnectionNotUsable(reason=f"the server connection broke: {err}") from err
        raise DatabaseError(str(err)) from err
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as err:
        # Every statement run here names runledger's own tables, so a missing one means
        # the schema was dropped since check_schema_once found it on this connection.
        raise SchemaNotMigrated(found=None, expected=latest_version()) from err
    except psycopg.Error as err:
        raise DatabaseError(str(err)) from err


HAS_SCHEMA = "select to_regclass('runledger.jobs') is not null"

# Connections (with the backend they talked to) on which the schema was found: a missing
# schema is told before the first statement on each connection, by a read that aborts
# nothing, and never again on it.
_schema_seen: weakref.WeakKeyDictionary[Conn, int] = weakref.WeakKeyDictionary()
_schema_lock = threading.Lock()


def check_schema_once(conn: Conn) -> None:
    """Raise ``SchemaNotMigrated`` if the ``runledger`` schema is not installed, the first
    time runledger uses ``conn`` (one round trip, a read: the caller's transaction stays
    usable); later calls on the same connection cost nothing."""
    pid = conn.info.backend_pid
    with _schema_lock:
        if _schema_seen.get(conn) == pid:
            return
    row = conn.execute(HAS_SCHEMA, prepare=False).fetchone()
    if not (row and row[0]):
        raise SchemaNotMigrated(found=None, expected=latest_version())
    with _schema_lock:
        _schema_seen[conn] = pid


@contextlib.contextmanager
def writing(conn: Conn) -> Iterator[Conn]:
    """Run a block of writes on the caller's connection (see the module docstring).

    Raises ``ConnectionNotUsable``/``TransactionAborted`` before writing anything, and wraps
    psycopg errors from the block in ``DatabaseError``.
    """
    check_usable(conn)
    with _translated(conn):
        check_schema_once(conn)
        # Only an autocommit connection outside any transaction needs one of its own; inside
        # the caller's ``with conn.transaction()`` the writes simply join it.
        if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            with conn.transaction():
                yield conn
        else:
            yield conn


@contextlib.contextmanager
def reading(conn: Conn) -> Iterator[Conn]:
    """Run reads on the caller's connection, wrapping psycopg errors as ``writing`` does."""
    check_usable(conn)
    with _translated(conn):
        check_schema_once(conn)
        yield conn


@contextlib.contextmanager
def savepoint(conn: Conn, name: str) -> Iterator[None]:
    """A savepoint, so a failure inside leaves the caller's transaction usable.

    Written as SQL rather than ``conn.transaction()``, which would commit an idle
    non-autocommit connection's implicit transaction at its end. ``name`` is a constant.
    """
    conn.execute(f"savepoint {name}")
    try:
        yield
    except BaseException:
        if not conn.closed and not conn.broken:
            conn.execute(f"rollback to savepoint {name}")
        raise
    conn.execute(f"release savepoint {name}")
