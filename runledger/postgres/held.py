"""``HeldConnection``: a pooled connection one thread keeps, in autocommit mode, between uses.

The claimer and the completer send a statement every few milliseconds under load: held in
autocommit mode, a connection runs each as a transaction of its own in one round trip (no BEGIN
and COMMIT), and a session setting made once replaces the claim's ``SET LOCAL plan_cache_mode``
(see ``runledger.postgres.attempts``; figures in ``benchmarks/README.md``).

The connection comes from the store's pool, so the pool's configuration (its ``kwargs``,
``configure`` callback, connection class) applies, and goes back with its autocommit mode
restored and its session settings reset. A connection that broke is handed back at once (the
pool discards broken ones) and the next use takes a fresh one, so a database restart costs the
holder one failed statement. Session settings are only for direct connections or PgBouncer in
session mode: in transaction mode the server connection changes between transactions, and a
``SET`` would stay behind on a connection other clients then use.

Plans go stale as the ledger grows: a plan made while ``jobs`` or ``job_attempts`` was a few
pages long scans the whole table, and stays cached until an ``ANALYZE`` or ``VACUUM`` of it. So
the holder sends ``DISCARD PLANS`` after 1, 2, 4, ... seconds of holding a connection, at most
a minute apart (``ReplanSchedule``): every plan in use was then made on tables at least half
their present size. Through PgBouncer in transaction mode it reaches whichever server
connection runs it, which costs that connection no more than a replan.

Not thread-safe: one holder per thread (the claimer's loop, the completer's loop).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from runledger.errors import ConnectionNotUsable
from runledger.postgres import liveness
from runledger.postgres.connection import Conn

REPLAN_FIRST_SECONDS = 1.0
"""How long after taking a connection its plans are first made again."""
REPLAN_MAX_SECONDS = 60.0
"""The longest gap between two replans of a held connection."""
DISCARD_PLANS = "discard plans"


class ReplanSchedule:
    """When to make a held connection's plans again: ``first`` seconds after ``start``, then
    after gaps that double up to ``longest``."""

    def __init__(
        self, first: float = REPLAN_FIRST_SECONDS, longest: float = REPLAN_MAX_SECONDS
    ) -> None:
        self._first = first
        self._longest = longest
        self._gap = first
        self._due = float("inf")

    def start(self, now: float) -> None:
        """A connection was taken at ``now``: begin again with the first gap."""
        self._gap = self._first
        self._due = now + self._first

    def due(self, now: float) -> bool:
        """True once a replan is due at ``now``; the next one is then a doubled gap away."""
        if now < self._due:
            return False
        self._gap = min(self._gap * 2, self._longest)
        self._due = now + self._gap
        return True


class HeldConnection:
    """One connection of ``pool`` kept between uses, in autocommit mode, with ``settings``.

    ``settings`` (name -> value) are set for the session each time a connection is taken and
    reset when it goes back. ``close()`` hands the connection back; a later use takes one again.
    With ``replan`` its prepared statements are planned again on a ``ReplanSchedule``;
    ``clock`` is what it reads the time from.
    """

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        settings: Mapping[str, str] | None = None,
        replan: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._pool = pool
        self._settings = dict(settings or {})
        self._replan = ReplanSchedule() if replan else None
        self._clock = clock
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
            if self._replan_due(conn):
                conn.execute(DISCARD_PLANS, prepare=False)
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
            if liveness.is_alive(self._conn):
                return self._conn
            self._give_back()  # the server closed it since the last use: take a fresh one
        try:
            conn: Conn = liveness.take(self._pool)
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
        if self._replan is not None:
            self._replan.start(self._clock())
        return conn

    def _replan_due(self, conn: Conn) -> bool:
        if self._replan is None or conn.prepare_threshold is None:
            return False
        return self._replan.due(self._clock())

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
