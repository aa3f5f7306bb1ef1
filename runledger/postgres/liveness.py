"""Liveness of pooled connections: never hand out one the server already closed, and tell a
connection that broke in use (retry at once on a fresh one) from a database that cannot be
reached (back off).

A backend ended by ``pg_terminate_backend``, a server restart or an idle timeout sends its
last message and closes the socket while the connection sits idle in the pool, and the pool
would hand it out again: the next statement fails, and under a terminate storm every loop
failed on every connection it took. An idle connection's socket has nothing to read, so a
zero-timeout poll of it tells for free (no round trip) whether the server spoke since; only
then is the connection checked with an empty query, and discarded if that fails.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

from runledger.postgres.connection import Conn

# Connection-level SQLSTATE classes: 08 (connection exception), 57P (operator intervention:
# admin shutdown, crash shutdown, cannot connect now, idle session timeout).
_BROKEN_SQLSTATES = ("08", "57P")


def server_spoke(conn: Conn) -> bool:
    """True if an idle connection's socket has something to read, which on an idle pooled
    connection means the server closed it or is about to (or, rarely, sent a notice)."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return True  # no socket: the connection is gone
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def is_alive(conn: Conn) -> bool:
    """True unless ``conn`` is closed, broken, or fails an empty query after the server spoke
    while it was idle. Costs a round trip only in that last case."""
    if conn.closed or conn.broken:
        return False
    if not server_spoke(conn):
        return True
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


def take(pool: ConnectionPool[Any], timeout: float | None = None) -> Conn:
    """A live connection from ``pool`` (``pool.getconn()``, blocking up to ``timeout``
    seconds, by default the pool's).

    Connections the server closed while they sat in the pool are discarded on the way (the
    pool opens replacements in the background), at most one pool's worth of them.

    Raises:
        psycopg_pool.PoolTimeout: no connection could be had in the pool's timeout.
    """
    for _ in range(pool.max_size + 1):
        conn: Conn = pool.getconn(timeout)
        if is_alive(conn):
            return conn
        conn.close()
        pool.putconn(conn)  # a closed connection is dropped and replaced by the pool
    conn = pool.getconn(timeout)
    return conn


@contextlib.contextmanager
def connection(pool: ConnectionPool[Any], timeout: float | None = None) -> Iterator[Conn]:
    """``pool.connection()`` with ``take``: a live connection, returned after the block
    (rolled back first if the block left a transaction open, as the pool does)."""
    conn = take(pool, timeout)
    try:
        with conn:
            yield conn
    finally:
        pool.putconn(conn)


def connection_broke(err: BaseException) -> bool:
    """True if ``err`` (or an exception it was raised from) says a connection broke while in
    use, so that the work can be retried at once on a fresh connection; False for anything
    else, including failing to get a connection at all (the database is away: back off)."""
    seen: BaseException | None = err
    depth = 0
    broke = False
    while seen is not None and depth < 10:
        if isinstance(seen, (PoolTimeout, TooManyRequests)):
            return False
        if isinstance(seen, psycopg.OperationalError):
            state = seen.sqlstate
            broke = broke or state is None or state.startswith(_BROKEN_SQLSTATES)
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return broke
