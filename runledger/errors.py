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
    ConfigError,
    ConflictingRunAt,
    CycleDetected,
    DuplicateDependency,
    DuplicateStepKey,
    EmptyWorkflow,
    ExternalStepWithJobSettings,
    InvalidConcurrencyKey,
    InvalidCron,
    InvalidDelay,
    InvalidId,
    InvalidMaxAttempts,
    InvalidQueueLimit,
    InvalidTimeout,
    InvalidUnique,
    JobOptionError,
    MissingJobType,
    NaiveRunAt,
    NulInText,
    PayloadNotSerializable,
    PayloadTooLarge,
    PriorityOutOfRange,
    RunAtOutOfRange,
    RunledgerError,
    SelfDependency,
    SurrogateInText,
    TextTooLong,
    UnknownDependency,
    UnknownResultStep,
    UnknownTimezone,
    ValidationError,
    WorkflowBuildError,
)
from runledger.core.progress import InvalidProgress
from runledger.core.retry import InvalidRetryPolicy, InvalidSnooze

__all__ = [
    "AttemptError",
    "BlankIdempotencyKey",
    "BlankJobType",
    "BlankQueue",
    "BlankStepKey",
    "BlankWorkflowName",
    "BuilderMisuse",
    "ClaimInterrupted",
    "ConfigError",
    "ConflictingRunAt",
    "ConnectionNotUsable",
    "CycleDetected",
    "DatabaseError",
    "DuplicateDependency",
    "DuplicateHandler",
    "DuplicateStepKey",
    "EmptyWorkflow",
    "ExternalStepConflict",
    "ExternalStepWithJobSettings",
    "IdempotencyConflict",
    "InvalidConcurrencyKey",
    "InvalidCron",
    "InvalidDelay",
    "InvalidId",
    "InvalidMaxAttempts",
    "InvalidProgress",
    "InvalidQueueLimit",
    "InvalidRetryPolicy",
    "InvalidSnooze",
    "InvalidTimeout",
    "InvalidUnique",
    "JobNotFound",
    "JobNotRequeueable",
    "JobOptionError",
    "LeaseExpired",
    "MigrationError",
    "MissingExtra",
    "MissingJobType",
    "NaiveRunAt",
    "NotAnExternalStep",
    "NulInText",
    "OutcomeNotWritable",
    "PayloadNotSerializable",
    "PayloadTooLarge",
    "PriorityOutOfRange",
    "RunAtOutOfRange",
    "RunNotFinished",
    "RunNotRetryable",
    "RunledgerError",
    "ScheduleNotFound",
    "SchemaNotMigrated",
    "SelfDependency",
    "StepNotFound",
    "StepNotWaiting",
    "SurrogateInText",
    "TextTooLong",
    "TimedOut",
    "TransactionAborted",
    "UnknownDependency",
    "UnknownJobType",
    "UnknownResultStep",
    "UnknownTimezone",
    "UnsupportedDriver",
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
    """The ``runledger`` schema is missing or older than this version of runledger.

    Raised by ``check_schema`` and the runtime's start, and by any call on the caller's
    connection whose statement finds a runledger table or the schema missing (SQLSTATE
    42P01 or 3F000, the psycopg error as ``__cause__``).

    Attributes:
        found: the applied version, or None when there is none (or, when recognised from
            a missing table, not read: no statement can run in the failed transaction).
        expected: the version this runledger needs.
    """

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


class StepNotFound(RunledgerError, LookupError):
    """The workflow run has no step with this key (or there is no such run)."""

    def __init__(self, *, run_id: uuid.UUID, step_key: str) -> None:
        self.run_id = run_id
        self.step_key = step_key
        super().__init__(f"workflow run {run_id} has no step {step_key!r}")


class NotAnExternalStep(RunledgerError, ValueError):
    """Only external steps take ``complete_external_step``/``fail_external_step``."""

    def __init__(self, *, run_id: uuid.UUID, step_key: str, kind: str) -> None:
        self.run_id = run_id
        self.step_key = step_key
        self.kind = kind
        super().__init__(
            f"step {step_key!r} of run {run_id} is a {kind} step; only external steps "
            "are completed from outside"
        )


class StepNotWaiting(RunledgerError):
    """The external step is not waiting for a signal (yet, or any more).

    Attributes:
        status: the step's current status (``blocked`` until its prerequisites finish,
            ``cancelled`` when the run was cancelled or a prerequisite failed).
    """

    def __init__(self, *, run_id: uuid.UUID, step_key: str, status: str) -> None:
        self.run_id = run_id
        self.step_key = step_key
        self.status = status
        super().__init__(
            f"external step {step_key!r} of run {run_id} is {status}, not waiting; "
            "it can only be completed while waiting"
        )


class ExternalStepConflict(RunledgerError):
    """The external step was already completed differently.

    Repeating the same completion is a no-op; this is raised for a different output, or for
    completing a step that failed (or failing one that succeeded).

    Attributes:
        status: the step's status (``succeeded`` or ``failed``).
        existing_output: the output it succeeded with, if it did.
    """

    def __init__(
        self, *, run_id: uuid.UUID, step_key: str, status: str, existing_output: object
    ) -> None:
        self.run_id = run_id
        self.step_key = step_key
        self.status = status
        self.existing_output = existing_output
        super().__init__(
            f"external step {step_key!r} of run {run_id} already {status} with a different "
            "result; the first completion stands"
        )


class JobNotRequeueable(RunledgerError):
    """``requeue`` takes failed or cancelled jobs that are not workflow steps, and whose
    idempotency key no live job holds.

    Attributes:
        job_id: the job.
        status: its status.
        reason: why it cannot be requeued.
        key_holder: the queued or running job its idempotency key belongs to now, when that
            is the reason (cancel it, or enqueue a new job); None otherwise.
    """

    def __init__(
        self, *, job_id: uuid.UUID, status: str, reason: str, key_holder: uuid.UUID | None = None
    ) -> None:
        self.job_id = job_id
        self.status = status
        self.reason = reason
        self.key_holder = key_holder
        super().__init__(f"job {job_id} cannot be requeued: {reason}")


class RunNotRetryable(RunledgerError):
    """``retry_workflow`` takes runs that finished ``completed_with_errors`` or ``cancelled``
    and have a step that can run again.

    Attributes:
        run_id: the run.
        status: its status (``running``/``waiting`` while still open, ``succeeded``, ...).
        reason: why it cannot be retried.
    """

    def __init__(self, *, run_id: uuid.UUID, status: str, reason: str) -> None:
        self.run_id = run_id
        self.status = status
        self.reason = reason
        super().__init__(f"workflow run {run_id} cannot be retried: {reason}")


class ScheduleNotFound(RunledgerError, LookupError):
    """No schedule has this name."""

    def __init__(self, *, name: str) -> None:
        self.name = name
        super().__init__(f"no schedule named {name!r}")


class RunNotFinished(RunledgerError, TimeoutError):
    """``wait_for_run`` gave up: the run had not finished within the timeout."""

    def __init__(self, *, run_id: uuid.UUID, status: str, timeout: float) -> None:
        self.run_id = run_id
        self.status = status
        self.timeout = timeout
        super().__init__(f"workflow run {run_id} is still {status} after {timeout:g} s")


class UnsupportedDriver(RunledgerError):
    """A SQLAlchemy session or connection does not run on psycopg 3 and PostgreSQL.

    Raised by the Flask integration (``runledger.contrib.flask``), which joins a session's
    transaction by writing on its psycopg 3 connection, so the engine's URL must start with
    ``postgresql+psycopg://``. Nothing was written.

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


class MissingExtra(RunledgerError, ImportError):
    """A feature needs an optional dependency that is not installed.

    Attributes:
        extra: the extra that installs it (``pip install 'runledger-pg[<extra>]'``).
        package: the distribution missing.
    """

    def __init__(self, *, extra: str, package: str) -> None:
        self.extra = extra
        self.package = package
        super().__init__(
            f"{package} is not installed: install the {extra!r} extra "
            f"(pip install 'runledger-pg[{extra}]')"
        )


class AttemptError(RunledgerError):
    """Why the runtime, not the handler, ended an attempt. Never raised to callers: its
    class name is what ``job_attempts.error_type`` and ``jobs.last_error`` record."""


class TimedOut(AttemptError):
    """The attempt outlived its ``timeout_seconds``."""


class LeaseExpired(AttemptError):
    """The worker running the attempt stopped renewing its lease (it died or hung)."""


class ClaimInterrupted(AttemptError):
    """A claim committed, but its connection broke before the worker read which jobs it got."""


class OutcomeNotWritable(AttemptError):
    """The database refused to store the attempt's outcome (its output, say)."""
