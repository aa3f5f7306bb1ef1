"""``HeldConnection``: a pooled connection one thread keeps, in autocommit mode, between uses.

The claimer and the completer send a statement every few milliseconds under load. On a pooled
connection inside ``Store.transaction()`` each statement also costs a BEGIN and a COMMIT round
trip, and the claim a ``SET LOCAL plan_cache_mode`` (see ``runledger.postgres.attempts``). A
connection held in autocommit mode runs a single statement as a transaction of its own in one
round trip, and a session-level setting made once replaces the claim's ``SET LOCAL``
(``benchmarks/claim.py`` measured 0.74 of the time for a claim of one job, 0.82 for sixteen).

The connection comes from the store's pool, so the pool's configuration (its ``kwargs``,
``configure`` callback, connection class) applies, and goes back with its autocommit mode
restored and its session settings reset. A connection that broke is handed back at once (the
pool discards broken ones) and the next use takes a fresh one, so a database restart costs the
holder one failed statement. Session settings are only for direct connections or PgBouncer in
session mode: in transaction mode the server connection changes between transactions, and a
``SET`` would stay behind on a connection other clients then use.

Not thread-safe: one holder per thread (the claimer's loop, the completer's loop).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from runledger.errors import ConnectionNotUsable
from runledger.postgres.connection import Conn


class HeldConnection:
    """One connection of ``pool`` kept between uses, in autocommit mode, with ``settings``.

    ``settings`` (name -> value) are set for the session each time a connection is taken and
    reset when it goes back. ``close()`` hands the connection back; a later use takes one again.
    """

    def __init__(self, pool: ConnectionPool[Any], *, settings: Mapping[str, str] | None = None):
        self._pool = pool
        self._settings = dict(settings or {})
        self._conn: Conn | None = None
        self._autocommit_was = False

    @property
    def settings(self) -> Mapping[str, str]:
        """The session settings every connection this holder takes carries."""
        return self._settings

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Conn]:
        """The held connection in autocommit mode: each statement commits on its own.

        A broken connection is handed back when the block raises; the error propagates.
        """
        conn = self._take()
        try:
            yield conn
        except BaseException:
            if conn.closed or conn.broken:
                self._give_back()
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Conn]:
        """The held connection inside a transaction that commits when the block ends."""
        with self.autocommit() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        """Hand the connection back to the pool, settings reset; idempotent."""
        if self._conn is not None:
            self._give_back()

    def _take(self) -> Conn:
        if self._conn is not None:
            return self._conn
        try:
            conn: Conn = self._pool.getconn()
        except psycopg.OperationalError as err:
            raise ConnectionNotUsable(reason=f"cannot reach the database: {err}") from err
        try:
            self._autocommit_was = conn.autocommit
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.autocommit = True
            for name, value in self._settings.items():
                conn.execute(
                    sql.SQL("select set_config({}, {}, false)").format(name, value),
                    prepare=False,
                )
        except BaseException:
            self._pool.putconn(conn)
            raise
        self._conn = conn
        return conn

    def _give_back(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not (conn.closed or conn.broken):
            try:
                for name in self._settings:
                    conn.execute(sql.SQL("reset {}").format(sql.Identifier(name)), prepare=False)
                conn.autocommit = self._autocommit_was
            except psycopg.Error:
                conn.close()  # a setting that would not reset must not reach another user
        self._pool.putconn(conn)
