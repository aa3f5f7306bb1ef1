"""The ``Store``: a connection pool and the transactions runledger opens for itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from runledger.errors import ConnectionNotUsable
from runledger.postgres import liveness
from runledger.postgres.connection import Conn
from runledger.postgres.migrate import check_schema, migrate


class Store:
    """A pool of connections to the database holding the ``runledger`` schema.

    ``Store(dsn)`` opens its own pool (closed by ``close()``); ``Store(pool)`` borrows a
    ``psycopg_pool.ConnectionPool`` the caller owns and closes. ``prepare_threshold=None``
    turns psycopg's automatic prepared statements off, for PgBouncer in transaction mode
    before 1.21. Thread-safe: each
    ``transaction()`` takes its own connection from the pool.
    """

    def __init__(
        self,
        dsn_or_pool: str | ConnectionPool[Any],
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        prepare_threshold: int | None = 5,
    ) -> None:
        if isinstance(dsn_or_pool, ConnectionPool):
            self._pool: ConnectionPool[Any] = dsn_or_pool
            self._owns_pool = False
        elif isinstance(dsn_or_pool, str):
            self._pool = ConnectionPool(
                dsn_or_pool,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                open=True,
                name="runledger-pool",
                kwargs={"autocommit": False, "prepare_threshold": prepare_threshold},
            )
            self._owns_pool = True
        else:
            raise TypeError(
                f"Store takes a DSN string or a psycopg_pool.ConnectionPool, "
                f"got {type(dsn_or_pool).__qualname__}"
            )

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The underlying pool."""
        return self._pool

    @property
    def conninfo(self) -> str:
        """The connection string of the pool (for dedicated connections such as LISTEN)."""
        info = self._pool.conninfo
        return info() if callable(info) else info

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Conn]:
        """A pooled connection for the block; blocks up to ``timeout`` seconds for one (by
        default the pool's timeout).

        Connections the server closed while they sat in the pool are skipped
        (``runledger.postgres.liveness``).
        """
        try:
            with liveness.connection(self._pool, timeout) as conn:
                yield conn
        except psycopg.OperationalError as err:
            raise ConnectionNotUsable(reason=f"cannot reach the database: {err}") from err

    @contextlib.contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Conn]:
        """A pooled connection inside a transaction that commits when the block ends; waits
        up to ``timeout`` for the connection, as ``connection`` does.

        An exception in the block rolls the transaction back and propagates.
        """
        with self.connection(timeout) as conn, conn.transaction():
            yield conn

    def migrate(self) -> list[int]:
        """Apply pending migrations (see ``runledger.migrate``)."""
        with self.connection() as conn:
            return migrate(conn)

    def check_schema(self) -> None:
        """Raise ``SchemaNotMigrated`` unless the schema is at the shipped version."""
        with self.connection() as conn:
            check_schema(conn)

    def close(self) -> None:
        """Close the pool if the store opened it; idempotent."""
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
