"""Flask integration: settings from ``app.config``, enqueue inside the request's transaction,
``flask runledger worker`` / ``flask runledger migrate``, and an optional in-process runtime.

Set up::

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from runledger.contrib.flask import Runledger

    from myapp.jobs import registry          # @registry.handler(...) functions

    db = SQLAlchemy()
    jobs = Runledger(registry=registry)

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://app@db/app"
        db.init_app(app)
        jobs.init_app(app)
        return app

Enqueue in the request's transaction. With Flask-SQLAlchemy (or any SQLAlchemy 2 session on
the psycopg 3 driver) the job is written on the session's own connection, so it commits with
``db.session.commit()`` and disappears with a rollback, including the one Flask-SQLAlchemy
does when a view raises::

    from runledger.contrib import flask as rl

    @app.post("/signup")
    def signup():
        user = User(email=request.json["email"])
        db.session.add(user)
        db.session.flush()
        rl.enqueue(db.session, "email.welcome", {"user_id": user.id})
        db.session.commit()                  # the user row and the job, or neither
        return {"id": user.id}, 201

Without SQLAlchemy, enqueue on the psycopg connection the view already writes with
(``runledger.enqueue(conn, ...)`` joins its open transaction), or let the extension lend one
from its pool::

    with jobs.connection() as conn:          # committed when the block ends
        conn.execute("insert into signups (email) values (%s)", [email])
        runledger.enqueue(conn, "email.welcome", {"to": email})

Run the jobs with ``flask --app myapp runledger worker`` (one process per machine or
container, blocks until SIGTERM/SIGINT), or set ``RUNLEDGER_RUN_IN_PROCESS = True`` for small
deployments (see ``Runledger``). ``flask --app myapp runledger migrate`` installs the schema.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import re
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
import click
import psycopg
from flask import Flask, current_app, has_app_context
from flask.cli import AppGroup

import runledger
from runledger.core.handler import HandlerCatalog
from runledger.core.job import DEFAULT_PRIORITY, Job
from runledger.core.payload import JsonValue
from runledger.core.workflow import Workflow
from runledger.errors import ConfigError, RunledgerError, SchemaNotMigrated
from runledger.postgres.connection import Conn
from runledger.postgres.migrate import latest_version
from runledger.postgres.store import Store
from runledger.runtime.config import settings_from_env
from runledger.runtime.registry import Registry
from runledger.runtime.runtime import Runtime

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session, scoped_session

__all__ = [
    "EXTENSION_KEY",
    "FlaskSettings",
    "Runledger",
    "UnsupportedDriver",
    "cli",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "libpq_dsn",
    "session_connection",
    "settings_from_config",
    "sqlalchemy_url",
]

_logger = logging.getLogger("runledger.flask")

EXTENSION_KEY = "runledger"
"""The key of the ``Runledger`` extension in ``app.extensions``."""

SessionLike: TypeAlias = "Session | scoped_session[Any] | SAConnection | Conn"
"""What the enqueue helpers write on: a SQLAlchemy session (Flask-SQLAlchemy's ``db.session``
included) or connection on the psycopg 3 driver, or a psycopg 3 connection."""

# The Runtime options read from app.config, parsed by the same rules as the environment.
_RUNTIME_KEYS = (
    "RUNLEDGER_CONCURRENCY",
    "RUNLEDGER_QUEUES",
    "RUNLEDGER_POLL_INTERVAL",
    "RUNLEDGER_LEASE_SECONDS",
    "RUNLEDGER_LISTEN",
    "RUNLEDGER_SHUTDOWN_TIMEOUT",
)
_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9.+-]*)://")
_POSTGRES_SCHEME = re.compile(r"^postgres(?:ql)?(?:\+[A-Za-z0-9_]+)?$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class UnsupportedDriver(RunledgerError):
    """A SQLAlchemy session or connection does not run on psycopg 3 and PostgreSQL.

    runledger joins a session's transaction by writing on its psycopg 3 connection, so the
    engine's URL must start with ``postgresql+psycopg://``. Nothing was written.

    Attributes:
        dialect: the SQLAlchemy dialect name (``postgresql``, ``sqlite``, ...).
        driver: the DBAPI driver name (``psycopg2``, ``pysqlite``, ...).
    """

    def __init__(self, *, dialect: str, driver: str) -> None:
        self.dialect = dialect
        self.driver = driver
        super().__init__(
            f"runledger joins a SQLAlchemy transaction only through the psycopg 3 driver, and "
            f"this session runs on {dialect}+{driver}: use a 'postgresql+psycopg://' URL "
            "(pip install 'psycopg[binary]')"
        )


# --- settings ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FlaskSettings:
    """The runledger settings of one Flask app, read from its ``app.config``.

    Attributes:
        dsn: the libpq connection string of the database holding the ``runledger`` schema.
        concurrency, queues, poll_interval, lease_seconds, listen, shutdown_timeout: the
            ``Runtime`` options; None leaves the ``Runtime`` default.
        run_in_process: start a runtime inside the web process (see ``Runledger``).
    """

    dsn: str
    concurrency: int | None = None
    queues: tuple[str, ...] | None = None
    poll_interval: float | None = None
    lease_seconds: float | None = None
    listen: bool | None = None
    shutdown_timeout: float | None = None
    run_in_process: bool = False

    def runtime_kwargs(self) -> dict[str, Any]:
        """The options that are set, as ``Runtime`` keyword arguments."""
        values = {
            "concurrency": self.concurrency,
            "queues": self.queues,
            "poll_interval": self.poll_interval,
            "lease_seconds": self.lease_seconds,
            "listen": self.listen,
            "shutdown_timeout": self.shutdown_timeout,
        }
        return {k: v for k, v in values.items() if v is not None}


def settings_from_config(config: Mapping[str, Any]) -> FlaskSettings:
    """Read the runledger settings from a Flask config (any mapping).

    The database is ``RUNLEDGER_DATABASE_URL`` (a libpq URL or ``key=value`` string), else
    ``SQLALCHEMY_DATABASE_URI`` turned into a libpq URL (see ``libpq_dsn``). Runtime options:
    ``RUNLEDGER_CONCURRENCY``, ``RUNLEDGER_QUEUES`` (a list or a comma-separated string),
    ``RUNLEDGER_POLL_INTERVAL``, ``RUNLEDGER_LEASE_SECONDS``, ``RUNLEDGER_LISTEN``,
    ``RUNLEDGER_SHUTDOWN_TIMEOUT``; and ``RUNLEDGER_RUN_IN_PROCESS``. Values may be native
    (``4``, ``["mail"]``, ``False``) or strings as the environment gives them (``"4"``,
    ``"mail,default"``, ``"false"``). Reads nothing else and touches no database.

    Raises:
        ConfigError: no database URL, a URL that is not PostgreSQL, or an option that does
            not parse; the error names the config key.
    """
    env: dict[str, str] = {}
    for key in _RUNTIME_KEYS:
        text = _config_text(key, config.get(key))
        if text is not None:
            env[key] = text
    parsed = settings_from_env(env)
    return FlaskSettings(
        dsn=_database_dsn(config),
        concurrency=parsed.concurrency,
        queues=parsed.queues,
        poll_interval=parsed.poll_interval,
        lease_seconds=parsed.lease_seconds,
        listen=parsed.listen,
        shutdown_timeout=parsed.shutdown_timeout,
        run_in_process=_config_flag(config, "RUNLEDGER_RUN_IN_PROCESS"),
    )


def libpq_dsn(url: str | URL) -> str:
    """The libpq connection string for a database URL, as psycopg and ``Store`` take it.

    A SQLAlchemy URL loses its driver (``postgresql+psycopg://u@h/db`` becomes
    ``postgresql://u@h/db``; any ``+driver`` goes: runledger connects with psycopg 3 itself).
    A ``sqlalchemy.URL`` object is rendered with its password. A ``key=value`` string is
    returned as it is.

    Raises:
        ConfigError: the URL is not a PostgreSQL one (``sqlite://``, ``mysql://``, ...).
    """
    return _to_dsn("database URL", url)


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) for a libpq DSN, URL or ``key=value`` form.

    ``"dbname=app host=/run/postgresql"`` gives ``postgresql+psycopg:///app?host=...``; use
    it for ``SQLALCHEMY_DATABASE_URI`` when the environment gives a libpq DSN. The password,
    if any, is kept in the result. Needs SQLAlchemy.
    """
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    url = URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        database=params.pop("dbname", None),
        # Host and port stay query parameters, which the psycopg dialect passes on as they
        # are: that keeps unix-socket directories and multi-host lists intact.
        query=params,
    )
    return url.render_as_string(hide_password=False)


def _to_dsn(name: str, value: object) -> str:
    if not isinstance(value, str):
        render = getattr(value, "render_as_string", None)
        if not callable(render):
            raise ConfigError(name=name, value=repr(value), expected="a PostgreSQL URL string")
        value = str(render(hide_password=False))
    found = _URL_SCHEME.match(value)
    if found is None:
        if not value.strip():
            raise ConfigError(name=name, value=value, expected="a PostgreSQL URL")
        return value  # a key=value connection string
    if not _POSTGRES_SCHEME.match(found["scheme"]):
        raise ConfigError(
            name=name,
            value=_URL_PASSWORD.sub(r"\1***@", value),
            expected="a PostgreSQL URL (postgresql:// or postgresql+psycopg://)",
        )
    return "postgresql://" + value[found.end() :]


def _database_dsn(config: Mapping[str, Any]) -> str:
    for name in ("RUNLEDGER_DATABASE_URL", "SQLALCHEMY_DATABASE_URI"):
        value = config.get(name)
        if value is not None and value != "":
            return _to_dsn(name, value)
    raise ConfigError(
        name="RUNLEDGER_DATABASE_URL",
        value="",
        expected="the PostgreSQL database of the runledger schema "
        "(set RUNLEDGER_DATABASE_URL or SQLALCHEMY_DATABASE_URI in app.config)",
    )


def _config_text(name: str, value: object) -> str | None:
    """A config value as the environment would spell it, for ``settings_from_env``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ConfigError(
        name=name, value=repr(value), expected="a string, a number or a list of strings"
    )


def _config_flag(config: Mapping[str, Any], name: str) -> bool:
    text = _config_text(name, config.get(name))
    if text is None or text == "":
        return False
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name=name, value=text, expected="true or false")


# --- enqueue on a SQLAlchemy session ---------------------------------------------------------


def session_connection(
    session: SessionLike, *, bind_arguments: dict[str, Any] | None = None
) -> Conn:
    """The psycopg 3 connection under a SQLAlchemy session, inside the session's transaction.

    Writes on it commit with ``session.commit()`` and vanish with ``session.rollback()`` (or
    with the rollback to a ``session.begin_nested()`` savepoint they were made in). Starts the
    session's transaction if it has none yet (SQLAlchemy's autobegin), checking a connection
    out of the engine's pool; no statement is sent. Works with ``sqlalchemy.orm.Session``,
    ``scoped_session`` (Flask-SQLAlchemy's ``db.session``) and ``sqlalchemy.engine
    .Connection``; a psycopg 3 connection is returned as it is. Thread-safe as far as the
    session is (a session belongs to one thread). An engine created with
    ``isolation_level="AUTOCOMMIT"`` has no transaction to join: each enqueue then commits at
    once.

    Args:
        session: the session or connection.
        bind_arguments: passed to ``session.connection()`` to pick an engine when the session
            has several binds (Flask-SQLAlchemy's ``__bind_key__``).

    Raises:
        UnsupportedDriver: the engine is not PostgreSQL on psycopg 3 (checked before the
            session's transaction starts).
    """
    if isinstance(session, psycopg.Connection):
        return session
    from sqlalchemy.engine import Connection as SAConnection

    if isinstance(session, SAConnection):
        sa_conn = session
        _check_dialect(sa_conn.dialect)
    else:
        _check_dialect(session.get_bind(**(bind_arguments or {})).dialect)
        sa_conn = session.connection(bind_arguments=bind_arguments)
    driver = sa_conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):  # pragma: no cover - guarded by the dialect
        raise UnsupportedDriver(dialect=sa_conn.dialect.name, driver=type(driver).__qualname__)
    return driver


def _check_dialect(dialect: Any) -> None:
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        raise UnsupportedDriver(dialect=str(dialect.name), driver=str(dialect.driver))


def _current_app() -> Flask:
    # Flask types current_app as Flask, but it is a proxy: weak references and dictionary
    # keys need the app itself.
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _app_registry(registry: HandlerCatalog | None) -> HandlerCatalog | None:
    if registry is not None or not has_app_context():
        return registry
    ext = current_app.extensions.get(EXTENSION_KEY)
    return ext.registry if isinstance(ext, Runledger) else None


def enqueue(
    session: SessionLike,
    job_type: str,
    payload: JsonValue = None,
    *,
    queue: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    run_at: datetime.datetime | None = None,
    delay: datetime.timedelta | float | None = None,
    max_attempts: int | None = None,
    timeout_seconds: int | None = None,
    idempotency_key: str | None = None,
    registry: HandlerCatalog | None = None,
    max_payload_bytes: int | None = None,
) -> uuid.UUID:
    """Queue one job in the session's transaction (``runledger.enqueue`` on its connection).

    The job commits with ``session.commit()`` and is gone after a rollback. ``registry``
    defaults to the current app's ``Runledger`` registry when there is an app context, so
    handler defaults (queue, attempts, timeout) apply and an unregistered job type is refused
    before anything is written. ``max_payload_bytes`` is that of ``runledger.enqueue``.
    Blocks for one round trip.

    Raises:
        UnsupportedDriver: the session is not on psycopg 3.
        JobOptionError, UnknownJobType, IdempotencyConflict, TransactionAborted,
        DatabaseError: as ``runledger.enqueue``.
    """
    return runledger.enqueue(
        session_connection(session),
        job_type,
        payload,
        queue=queue,
        priority=priority,
        run_at=run_at,
        delay=delay,
        max_attempts=max_attempts,
        timeout_seconds=timeout_seconds,
        idempotency_key=idempotency_key,
        registry=_app_registry(registry),
        max_payload_bytes=max_payload_bytes,
    )


def enqueue_many(
    session: SessionLike,
    jobs: Iterable[Job],
    *,
    registry: HandlerCatalog | None = None,
    max_payload_bytes: int | None = None,
) -> list[uuid.UUID]:
    """Queue many jobs in the session's transaction (``runledger.enqueue_many``).

    Same transaction and registry rules as ``enqueue``; returns the ids in input order.
    """
    return runledger.enqueue_many(
        session_connection(session),
        jobs,
        registry=_app_registry(registry),
        max_payload_bytes=max_payload_bytes,
    )


def enqueue_workflow(
    session: SessionLike,
    workflow: Workflow,
    *,
    registry: HandlerCatalog | None = None,
    max_payload_bytes: int | None = None,
) -> uuid.UUID:
    """Start a workflow run in the session's transaction (``runledger.enqueue_workflow``).

    Same transaction and registry rules as ``enqueue``; returns the run's id.

    Raises:
        UnsupportedDriver: the session is not on psycopg 3.
        UnknownJobType, IdempotencyConflict, DatabaseError: as ``runledger.enqueue_workflow``.
    """
    return runledger.enqueue_workflow(
        session_connection(session),
        workflow,
        _app_registry(registry),
        max_payload_bytes=max_payload_bytes,
    )


# --- the extension ---------------------------------------------------------------------------


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


# --- the flask runledger commands ------------------------------------------------------------

cli = AppGroup("runledger", help="runledger: migrate the schema, run workers.")
"""The ``flask runledger`` command group; ``init_app`` adds it to ``app.cli``."""


def _extension() -> Runledger:
    ext = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(ext, Runledger):
        raise click.UsageError("this app has no runledger extension: call Runledger(app)")
    return ext


@cli.command("migrate")
def migrate_command() -> None:
    """Install or upgrade the runledger schema in the app's database."""
    dsn = _extension().settings().dsn
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            applied = runledger.migrate(conn)
    except psycopg.Error as err:
        raise click.ClickException(f"cannot migrate: {str(err).strip()}") from err
    except RunledgerError as err:
        raise click.ClickException(str(err)) from err
    if applied:
        click.echo(f"applied migrations {', '.join(map(str, applied))}; schema at {applied[-1]}")
    else:
        click.echo(f"schema already at version {latest_version()}; nothing to apply")


@cli.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Handlers running at once (default: RUNLEDGER_CONCURRENCY, else 8).",
)
@click.option(
    "--queues",
    default=None,
    help="Comma-separated queues to take jobs from (default: RUNLEDGER_QUEUES, else default).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def worker_command(concurrency: int | None, queues: str | None, log_level: str) -> None:
    """Run the app's jobs, schedules and reaper until SIGTERM or SIGINT.

    Stops gracefully: claims nothing more, waits for running handlers up to
    RUNLEDGER_SHUTDOWN_TIMEOUT seconds, hands back the rest, and exits 0.
    """
    ext = _extension()
    overrides: dict[str, Any] = {}
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    if queues is not None:
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names:
            raise click.BadParameter("give at least one queue name", param_hint="--queues")
        overrides["queues"] = names
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    if not ext.registry.job_types():
        _logger.warning("the registry has no handlers: this worker will run no jobs")
    try:
        runtime = ext.create_runtime(**overrides)
    except SchemaNotMigrated as err:
        raise click.ClickException(f"{err}, or `flask runledger migrate`") from err
    except RunledgerError as err:
        raise click.ClickException(str(err)) from err
    # Only this command's own runtime: the in-process one, if configured, serves requests.
    runtime.run()
