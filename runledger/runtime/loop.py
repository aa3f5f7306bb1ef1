"""``Loop``: a named thread that repeats one step until stopped, and survives its errors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from runledger.postgres.liveness import connection_broke

_logger = logging.getLogger("runledger.runtime")


IMMEDIATE_RETRIES = 5
"""Failures in a row, each from a connection that broke in use, retried without a pause."""


class Loop:
    """Runs ``step(stop)`` over and over in a thread named ``name`` until ``stop()``.

    ``step`` does one round of work and waits on the event it is given (so that ``stop()``
    wakes it). A step that failed because its database connection broke in use is retried
    at once (the next step takes a fresh connection), up to ``IMMEDIATE_RETRIES`` times in a
    row; any other exception (including failing to get a connection: the database is away)
    is logged with its traceback and the loop goes on after ``pause`` seconds; a thread that
    dies anyway (a ``BaseException``) is noticed by ``alive()`` and restarted by
    ``ensure_running()``. ``start``/``stop`` are idempotent.
    ``on_exit`` runs in the loop's thread whenever it ends (stopped or died): it releases what
    the steps held, such as a connection, without racing a step still running.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[threading.Event], None],
        *,
        pause: float = 1.0,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._pause = pause
        self._on_exit = on_exit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        # Told of every error of a step (after it is logged); for the runtime's metrics.
        self.on_error: Callable[[BaseException], object] | None = None

    def start(self) -> None:
        """Start the thread if it is not running."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._step(self._stop)
                    failures = 0
                except Exception as err:
                    failures += 1
                    self.note_error(err)
                    if failures <= IMMEDIATE_RETRIES and connection_broke(err):
                        _logger.warning(
                            "%s: its database connection broke (%s); going on at once",
                            self.name,
                            str(err).strip() or type(err).__qualname__,
                        )
                        continue
                    _logger.exception("%s failed; going on in %.1f s", self.name, self._pause)
                    self._stop.wait(self._pause)
        finally:
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception:
                    _logger.exception("%s: releasing its resources failed", self.name)

    def note_error(self, err: BaseException) -> None:
        """Tell ``on_error`` of an error of this loop's work; never raises."""
        if self.on_error is not None:
            try:
                self.on_error(err)
            except Exception:
                _logger.exception("%s: its error callback failed", self.name)

    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def ensure_running(self) -> bool:
        """Restart the thread if it died without being stopped; return True if it did."""
        if self._stop.is_set() or self._thread is None or self._thread.is_alive():
            return False
        _logger.error("%s died; restarting it", self.name)
        self.restarts += 1
        self.start()
        return True

    def signal_stop(self) -> None:
        """Ask the loop to stop after its current step, without waiting."""
        self._stop.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the loop and join its thread; return False if it is still running."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True
