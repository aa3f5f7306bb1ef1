"""Every error a user of runledger can catch, rooted at ``RunledgerError``.

Validation errors (raised before anything touches the database) also subclass ``ValueError``.
Errors from the database layer wrap the psycopg exception as ``__cause__``. Match on the class
and read the fields; the messages are for people.
"""

from __future__ import annotations

import uuid

from runledger.core.errors import (
    BlankIdempotencyKey,
    BlankJobType,
    BlankQueue,
    BlankStepKey,
    BlankWorkflowName,
    BuilderMisuse,
    ConflictingRunAt,
    CycleDetected,
    DuplicateDependency,
    DuplicateStepKey,
    EmptyWorkflow,
    ExternalStepWithJobSettings,
    InvalidDelay,
    InvalidMaxAttempts,
    InvalidTimeout,
    JobOptionError,
    MissingJobType,
    NaiveRunAt,
    PayloadNotSerializable,
    PriorityOutOfRange,
    RunledgerError,
    SelfDependency,
    UnknownDependency,
    UnknownResultStep,
    ValidationError,
    WorkflowBuildError,
)

__all__ = [
    "BlankIdempotencyKey",
    "BlankJobType",
    "BlankQueue",
    "BlankStepKey",
    "BlankWorkflowName",
    "BuilderMisuse",
    "ConflictingRunAt",
    "ConnectionNotUsable",
    "CycleDetected",
    "DatabaseError",
    "DuplicateDependency",
    "DuplicateHandler",
    "DuplicateStepKey",
    "EmptyWorkflow",
    "ExternalStepWithJobSettings",
    "IdempotencyConflict",
    "InvalidDelay",
    "InvalidMaxAttempts",
    "InvalidTimeout",
    "JobNotFound",
    "JobOptionError",
    "MigrationError",
    "MissingJobType",
    "NaiveRunAt",
    "PayloadNotSerializable",
    "PriorityOutOfRange",
    "RunledgerError",
    "SchemaNotMigrated",
    "SelfDependency",
    "TransactionAborted",
    "UnknownDependency",
    "UnknownJobType",
    "UnknownResultStep",
    "ValidationError",
    "WorkflowBuildError",
    "WorkflowRunNotFound",
]


class UnknownJobType(ValidationError):
    """A job type has no handler in the registry given to enqueue.

    Attributes:
        job_type: the unregistered type.
        step_key: the workflow step that names it, or None for a plain job.
        known: the registered types, sorted.
    """

    def __init__(
        self, *, job_type: str, step_key: str | None = None, known: tuple[str, ...] = ()
    ) -> None:
        self.job_type = job_type
        self.step_key = step_key
        self.known = known
        where = f" (step {step_key!r})" if step_key is not None else ""
        super().__init__(
            f"no handler is registered for job type {job_type!r}{where}; "
            f"register one with @registry.handler({job_type!r}) or fix the name"
        )


class DatabaseError(RunledgerError):
    """The database refused or failed an operation; ``__cause__`` holds the psycopg error."""


class ConnectionNotUsable(DatabaseError):
    """The connection given is closed or broken; nothing was written."""

    def __init__(self, *, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the connection cannot be used: {reason}; open a new one")


class TransactionAborted(DatabaseError):
    """The connection is inside a failed transaction, so nothing can be written in it.

    An earlier statement in the caller's transaction failed; roll it back (leave the
    ``with conn.transaction()`` block or call ``conn.rollback()``) and enqueue again.
    """

    def __init__(self) -> None:
        super().__init__(
            "the connection is inside a failed transaction (an earlier statement failed); "
            "roll it back, then enqueue again; nothing was written"
        )


class SchemaNotMigrated(DatabaseError):
    """The ``runledger`` schema is missing or older than this version of runledger."""

    def __init__(self, *, found: int | None, expected: int) -> None:
        self.found = found
        self.expected = expected
        have = "is not installed" if found is None else f"is at version {found}"
        super().__init__(
            f"the runledger schema {have}, this runledger needs version {expected}: "
            "run `runledger migrate --dsn ...` (or runledger.migrate(conn))"
        )


class MigrationError(DatabaseError):
    """A migration could not be applied, or an applied one differs from the shipped file.

    Attributes:
        version: the migration's number.
        name: its file name.
    """

    def __init__(self, *, version: int, name: str, reason: str) -> None:
        self.version = version
        self.name = name
        self.reason = reason
        super().__init__(f"migration {name}: {reason}")


class IdempotencyConflict(RunledgerError):
    """An idempotency key is already used by a different request.

    Attributes:
        kind: "job" or "workflow".
        key: the idempotency key.
        scope: the job type or workflow name the key belongs to.
        existing_id: the id of the job or run already holding the key.
    """

    def __init__(self, *, kind: str, scope: str, key: str, existing_id: uuid.UUID) -> None:
        self.kind = kind
        self.scope = scope
        self.key = key
        self.existing_id = existing_id
        super().__init__(
            f"idempotency key {key!r} of {kind} {scope!r} already belongs to {existing_id} "
            "with a different request; use a new key or send the same request"
        )


class JobNotFound(RunledgerError, LookupError):
    """No job has this id."""

    def __init__(self, *, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id}")


class WorkflowRunNotFound(RunledgerError, LookupError):
    """No workflow run has this id."""

    def __init__(self, *, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        super().__init__(f"no workflow run {run_id}")


class DuplicateHandler(RunledgerError, ValueError):
    """A job type was registered twice in one registry."""

    def __init__(self, *, job_type: str) -> None:
        self.job_type = job_type
        super().__init__(f"job type {job_type!r} already has a handler in this registry")
