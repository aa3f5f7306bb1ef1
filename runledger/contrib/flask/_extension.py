"""The ``Runledger`` Flask extension: per-app settings, a store and an optional runtime."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import attrs
from flask import Flask, current_app

from runledger.contrib.flask._settings import FlaskSettings, settings_from_config
from runledger.postgres.connection import Conn
from runledger.postgres.store import Store
from runledger.runtime.registry import Registry
from runledger.runtime.runtime import Runtime

_logger = logging.getLogger("runledger.flask")

EXTENSION_KEY = "runledger"
"""The key of the ``Runledger`` extension in ``app.extensions``."""


def _current_app() -> Flask:
    # Flask types current_app as Flask, but it is a proxy: weak references and dictionary
    # keys need the app itself.
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


@attrs.define(eq=False)
class _AppState:
    """What the extension holds for one app in one process."""

    settings: FlaskSettings
    pid: int = attrs.field(factory=os.getpid)
    store: Store | None = None
    runtime: Runtime | None = None
    exit_hook: bool = False

    def close(self, timeout: float | None = None) -> None:
        if self.pid != os.getpid():
            # Registered with atexit before a fork: the pool and threads belong to the parent,
            # and closing its connections from here would end the parent's sessions.
            return
        runtime, self.runtime = self.runtime, None
        store, self.store = self.store, None
        try:
            if runtime is not None:
                runtime.stop(timeout)
        finally:
            if store is not None:
                store.close()
            if self.exit_hook:
                atexit.unregister(self.close)
                self.exit_hook = False


class Runledger:
    """The runledger extension for Flask.

    ``Runledger(app, registry=registry)``, or ``ext = Runledger(registry=registry)`` and
    ``ext.init_app(app)`` in an app factory; one extension can serve several apps. It reads
    its settings from ``app.config`` (``settings_from_config``), registers itself as
    ``app.extensions["runledger"]`` and adds the ``flask runledger`` commands.

    Per app and process it keeps a lazily created ``Store`` (a psycopg pool for
    ``connection()`` and for reads) and, optionally, an in-process ``Runtime``; both are
    closed by ``close()`` or at interpreter exit (``atexit``).

    In-process runtime: with ``RUNLEDGER_RUN_IN_PROCESS = True`` the first request each
    process serves starts a ``Runtime`` (threads: workers, heartbeat, listener, reaper,
    scheduler) for the app's registry; ``start_runtime(app)`` starts it at once instead.
    Starting on the first request rather than at ``init_app`` is what makes it safe under
    pre-forking servers: threads and pooled connections do not survive ``fork()``, and
    ``gunicorn --preload`` imports the app before forking; an extension used in a forked
    child drops what its parent made and starts afresh. With several gunicorn workers every
    worker process runs its own runtime. That is safe: claims use ``FOR UPDATE SKIP
    LOCKED``, so a job runs in one of them; the schedulers of all processes race for each
    cron tick, but a tick is materialised in the transaction that advances the schedule's
    ``next_run_at`` (rows locked with ``SKIP LOCKED``, and a unique index on the tick), so
    cron still fires once per tick; reapers are fenced on lease tokens. Each runtime holds up
    to ``concurrency + 6`` connections plus a LISTEN connection, per process. At exit the
    runtime drains for up to ``RUNLEDGER_SHUTDOWN_TIMEOUT`` seconds (default 30): keep it
    below the server's graceful timeout (gunicorn's ``--graceful-timeout``); jobs still
    running after it are retried by another runtime once their lease expires. For anything
    beyond small deployments run ``flask runledger worker`` processes instead.

    Handlers run in runtime threads inside ``app.app_context()`` (``current_app`` and
    Flask-SQLAlchemy work); writes meant to commit with the job's success go through
    ``ctx.conn``.

    Args:
        app: the app to initialise now, or None to call ``init_app`` later.
        registry: the handlers, schedules and hooks this app's workers run, and the registry
            the module's ``enqueue`` helpers check job types against. None gives an empty
            ``Registry()`` (``ext.registry``) to register handlers on.

    Thread-safe after ``init_app``.
    """

    def __init__(self, app: Flask | None = None, *, registry: Registry | None = None) -> None:
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError(f"registry must be a runledger.Registry, got {type(registry)!r}")
        self.registry: Registry = registry if registry is not None else Registry()
        self._states: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``app.config``, register the extension and the ``flask runledger`` commands.

        Touches no database. With ``RUNLEDGER_RUN_IN_PROCESS`` it also installs the
        ``before_request`` function that starts the in-process runtime.

        Raises:
            ConfigError: no database URL, or a setting that does not parse.
        """
        # The commands look the extension up in the app: imported here, not at the top.
        from runledger.contrib.flask._cli import cli

        settings = settings_from_config(app.config)
        with self._lock:
            self._states[app] = _AppState(settings=settings)
        app.extensions[EXTENSION_KEY] = self
        app.cli.add_command(cli)
        if settings.run_in_process:
            app.before_request(self._start_on_request)

    # --- per-app state ---------------------------------------------------------------------

    def _state(self, app: Flask | None) -> _AppState:
        if app is None:
            app = _current_app()
        with self._lock:
            state = self._states.get(app)
            if state is None:
                raise RuntimeError(
                    f"runledger is not initialised for app {app.name!r}: call init_app(app)"
                )
            if state.pid != os.getpid():
                # A forked child: the parent's pool threads and connections are not ours;
                # leave them alone and start afresh in this process.
                state = _AppState(settings=state.settings)
                self._states[app] = state
            return state

    def _exit_hook(self, state: _AppState) -> None:
        with self._lock:
            if not state.exit_hook:
                state.exit_hook = True
                atexit.register(state.close)

    def settings(self, app: Flask | None = None) -> FlaskSettings:
        """The settings of ``app`` (default: the current app)."""
        return self._state(app).settings

    @property
    def store(self) -> Store:
        """The current app's ``Store``, created on first use (needs an app context).

        The pool connects in the background; the first ``connection()`` waits for it.
        """
        return self.get_store()

    def get_store(self, app: Flask | None = None) -> Store:
        """The ``Store`` of ``app`` (default: the current app), created on first use."""
        state = self._state(app)
        with self._lock:
            if state.store is None:
                # Opening the pool starts its threads and returns; it connects in them.
                state.store = Store(state.settings.dsn)
            store = state.store
        self._exit_hook(state)
        return store

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        """A pooled psycopg connection inside a transaction committed when the block ends.

        For apps without SQLAlchemy: write the app's rows and ``runledger.enqueue(conn, ...)``
        in the block and they commit together; an exception rolls both back and propagates.
        Blocks up to the pool timeout (30 s) for a free connection. Needs an app context.

        Raises:
            ConnectionNotUsable: the database cannot be reached.
        """
        with self.store.transaction() as conn:
            yield conn

    # --- runtimes --------------------------------------------------------------------------

    def create_runtime(self, app: Flask | None = None, **overrides: Any) -> Runtime:
        """A new, unstarted ``Runtime`` for the app's registry and settings.

        ``overrides`` replace ``Runtime`` keyword arguments (``concurrency=2``). Checks the
        schema first, on one pooled connection. The caller starts and stops it (``run()``,
        or use it as a context manager).

        Raises:
            SchemaNotMigrated: run ``flask runledger migrate``.
            ConnectionNotUsable: the database cannot be reached.
        """
        if app is None:
            app = _current_app()
        settings = self._state(app).settings
        # Checked here so that nothing (not even the runtime's pool) is opened for nothing.
        self.get_store(app).check_schema()
        # Handlers run inside the app context, as Flask-SQLAlchemy users expect.
        options = {"handler_context": app.app_context, **settings.runtime_kwargs(), **overrides}
        return Runtime(settings.dsn, self.registry, **options)

    def start_runtime(self, app: Flask | None = None) -> Runtime:
        """Start the in-process runtime of ``app`` (default: the current app); idempotent.

        Returns the running runtime. Blocks while it checks the schema and starts its
        threads (about one round trip). Called on the first request when
        ``RUNLEDGER_RUN_IN_PROCESS`` is set; call it yourself to start at once.

        Raises:
            SchemaNotMigrated: run ``flask runledger migrate``; nothing was started.
            ConnectionNotUsable: the database cannot be reached; nothing was started.
        """
        if app is None:
            app = _current_app()
        state = self._state(app)
        with self._lock:
            running = state.runtime
        if running is not None:
            return running
        candidate = self.create_runtime(app)
        with self._lock:
            running = state.runtime
            if running is None:
                state.runtime = running = candidate
        if running is not candidate:  # another thread got there first
            # Runtime.stop() ignores a runtime that never started, pool included.
            candidate.store.close()
            return running
        try:
            running.start()
        except BaseException:
            with self._lock:
                if state.runtime is running:
                    state.runtime = None
            running.stop(0)
            raise
        self._exit_hook(state)
        _logger.info("in-process runtime %s started for app %r", running.worker_id, app.name)
        return running

    def stop_runtime(self, app: Flask | None = None, timeout: float | None = None) -> None:
        """Stop the in-process runtime of ``app`` if one runs; idempotent.

        Blocks up to about ``timeout`` seconds (default ``RUNLEDGER_SHUTDOWN_TIMEOUT``) while
        running handlers finish (see ``Runtime.stop``).
        """
        state = self._state(app)
        with self._lock:
            runtime, state.runtime = state.runtime, None
        if runtime is not None:
            runtime.stop(timeout)

    def close(self, app: Flask | None = None, timeout: float | None = None) -> None:
        """Stop the in-process runtime and close the store of ``app``; idempotent.

        Runs by itself at interpreter exit; call it sooner in tests or app teardown code.
        Blocks like ``stop_runtime``.
        """
        self._state(app).close(timeout)

    def _start_on_request(self) -> None:
        state = self._state(None)
        if state.runtime is None:  # a read without the lock: start_runtime re-checks
            self.start_runtime()
