"""Dedicated LISTEN connections: the runtime's, which reconnects and re-subscribes by itself,
and ``listening``, a short-lived one for a caller that waits on a channel."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

_logger = logging.getLogger("runledger.listener")

LISTEN = sql.SQL("listen {}")
"""Subscribes the session to a channel, given as a ``sql.Identifier``."""


STOP_CHECK = 0.2
"""Seconds between looks at the stop flag while no notification comes: a runtime's stop
waits for the listener no longer than this."""


def subscribe(conn: psycopg.Connection[Any], channels: Sequence[str]) -> None:
    """LISTEN on each of ``channels`` (names of ``runledger.postgres.channels``).

    ``conn`` must be in autocommit mode: a LISTEN inside a transaction only takes effect at
    its commit. Raises psycopg's error when the connection fails.
    """
    for channel in channels:
        conn.execute(LISTEN.format(sql.Identifier(channel)))


@contextmanager
def listening(conninfo: str, channels: Sequence[str]) -> Iterator[psycopg.Connection[Any]]:
    """A connection of its own, subscribed to ``channels``, closed on exit.

    The connection is in autocommit mode and never prepares a statement: through PgBouncer
    in transaction mode (before 1.21) a statement may land on a server connection that never
    saw one prepared by an earlier statement. Read notifications with ``conn.notifies()``;
    statements run on it commit one by one. Not thread-safe: use it in one thread.

    Raises:
        psycopg.OperationalError: the database cannot be reached.
    """
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        subscribe(conn, channels)
        yield conn


class Listener:
    """Receives NOTIFYs on ``channels`` and passes (channel, payload) to ``on_notify``.

    ``serve(stop)`` blocks until ``stop`` is set: it connects, LISTENs on every channel and
    waits for notifications; when the connection drops it logs, waits (1 s, doubling up to
    ``max_backoff``) and connects and subscribes again. Each reconnect calls ``on_reconnect``
    so the caller can poll for anything notified while it was away. Run it in one thread.
    """

    def __init__(
        self,
        conninfo: str,
        channels: Sequence[str],
        on_notify: Callable[[str, str], None],
        *,
        on_reconnect: Callable[[], None] = lambda: None,
        max_backoff: float = 10.0,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._max_backoff = max_backoff
        self._connect_kwargs = connect_kwargs or {}
        self.connected = threading.Event()

    def serve(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set (checked every ``STOP_CHECK`` seconds)."""
        backoff = 1.0
        while not stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, **self._connect_kwargs
                ) as conn:
                    subscribe(conn, self._channels)
                    self.connected.set()
                    self._on_reconnect()
                    backoff = 1.0
                    while not stop.is_set():
                        for note in conn.notifies(timeout=STOP_CHECK):
                            self._on_notify(note.channel, note.payload)
            except psycopg.Error as err:
                self.connected.clear()
                _logger.warning("listener connection lost (%s); reconnecting in %.0f s", err,
                                backoff)  # fmt: skip
                stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
        self.connected.clear()
