"""A dedicated LISTEN connection that reconnects and re-subscribes by itself."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

_logger = logging.getLogger("runledger.listener")


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
        """Listen until ``stop`` is set (checked at least once a second)."""
        backoff = 1.0
        while not stop.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, **self._connect_kwargs
                ) as conn:
                    for channel in self._channels:
                        conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
                    self.connected.set()
                    self._on_reconnect()
                    backoff = 1.0
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._on_notify(note.channel, note.payload)
            except psycopg.Error as err:
                self.connected.clear()
                _logger.warning("listener connection lost (%s); reconnecting in %.0f s", err,
                                backoff)  # fmt: skip
                stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
        self.connected.clear()
