"""Enqueue on a SQLAlchemy session: runledger writes on the psycopg 3 connection under it."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
from flask import current_app, has_app_context

import runledger
from runledger.contrib.flask._extension import EXTENSION_KEY, Runledger
from runledger.core.handler import HandlerCatalog
from runledger.core.job import DEFAULT_PRIORITY, Job
from runledger.core.payload import JsonValue
from runledger.core.unique import FOREVER, Unique
from runledger.core.workflow import Workflow
from runledger.errors import UnsupportedDriver
from runledger.postgres.connection import Conn

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.orm import Session, scoped_session

SessionLike: TypeAlias = "Session | scoped_session[Any] | SAConnection | Conn"
"""What the enqueue helpers write on: a SQLAlchemy session (Flask-SQLAlchemy's ``db.session``
included) or connection on the psycopg 3 driver, or a psycopg 3 connection."""


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
    unique: Unique = FOREVER,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
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
        unique=unique,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
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
