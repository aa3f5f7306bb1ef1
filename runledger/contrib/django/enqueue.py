"""Enqueue on Django's connection, so jobs commit and roll back with ``transaction.atomic()``.

Inside an atomic block the job's rows are written in Django's transaction: they become
visible when the outermost block commits, vanish if it rolls back, and a nested block
(a savepoint) that rolls back takes only its own jobs with it. Outside any atomic block
Django's connection is in autocommit mode and the job commits at once, in a short
transaction of its own. No ``transaction.on_commit`` is needed: the job is a row in the same
database as the application's own rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS

from runledger.core.job import Job
from runledger.core.payload import JsonValue
from runledger.core.workflow import Workflow
from runledger.postgres.enqueue import enqueue as store_enqueue
from runledger.postgres.enqueue import enqueue_many as store_enqueue_many
from runledger.postgres.enqueue import enqueue_workflow as store_enqueue_workflow
from runledger.runtime.registry import Registry

from .connection import psycopg_connection
from .jobs import registry as project_registry

# The default of ``registry=``: the project-wide registry (runledger.contrib.django.registry).
_PROJECT: Any = object()


def _catalog(registry: Registry | None) -> Registry | None:
    return project_registry if registry is _PROJECT else registry


def enqueue(
    job_type: str,
    payload: JsonValue = None,
    *,
    using: str = DEFAULT_DB_ALIAS,
    registry: Registry | None = _PROJECT,
    **options: Any,
) -> uuid.UUID:
    """Queue one job on Django's database ``using``; return its id.

    Joins the open ``transaction.atomic(using=using)`` block (see the module docstring);
    outside one the job commits at once. ``options`` are those of ``runledger.enqueue``:
    ``queue``, ``priority``, ``run_at``, ``delay``, ``max_attempts``, ``timeout_seconds``,
    ``idempotency_key``, ``unique``, ``concurrency_key``, ``concurrency_limit``,
    ``max_payload_bytes``. Jobs of a type the registry knows
    take its handler's defaults (queue, attempts, timeout); pass ``registry=None`` to enqueue a
    type that no handler in this project registers (one run by another service's workers).
    Blocks for one round trip.
    Thread-safe: each thread has its own Django connection.

    Raises:
        UnknownJobType: the project registry has no handler for ``job_type`` (nothing written).
        JobOptionError, PayloadNotSerializable, PayloadTooLarge: invalid input (nothing
            written).
        IdempotencyConflict: the key already belongs to a different request.
        TransactionManagementError: the atomic block is broken by an earlier failed query.
        DatabaseError: the database refused the write.
    """
    conn = psycopg_connection(using)
    return store_enqueue(conn, job_type, payload, registry=_catalog(registry), **options)


def enqueue_many(
    jobs: Iterable[Job],
    *,
    using: str = DEFAULT_DB_ALIAS,
    registry: Registry | None = _PROJECT,
    max_payload_bytes: int | None = None,
) -> list[uuid.UUID]:
    """Queue many ``runledger.Job`` values on Django's database; return their ids in order.

    Same transaction rules, defaults and errors as ``enqueue``; every job is validated before
    anything is written.
    """
    conn = psycopg_connection(using)
    return store_enqueue_many(
        conn, jobs, registry=_catalog(registry), max_payload_bytes=max_payload_bytes
    )


def enqueue_workflow(
    workflow: Workflow,
    *,
    using: str = DEFAULT_DB_ALIAS,
    registry: Registry | None = _PROJECT,
    max_payload_bytes: int | None = None,
) -> uuid.UUID:
    """Start a run of ``workflow`` on Django's database; return the run's id.

    Same transaction rules as ``enqueue``: the run, its steps and its first jobs commit with
    the atomic block or not at all. A failure leaves the atomic block usable.

    Raises:
        UnknownJobType: a step's job type has no handler in the project registry.
        PayloadTooLarge: the input or a step's payload is over ``max_payload_bytes``.
        IdempotencyConflict: the workflow's key belongs to a different request.
        DatabaseError: the database refused the write.
    """
    conn = psycopg_connection(using)
    return store_enqueue_workflow(
        conn, workflow, _catalog(registry), max_payload_bytes=max_payload_bytes
    )
