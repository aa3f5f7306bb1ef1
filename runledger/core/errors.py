"""Errors raised by the pure core: invalid job options and invalid workflows.

Every class carries the fields needed to act on it; match on the class, never on the message.
``runledger.errors`` re-exports all of them beside the store and runtime errors.
"""

from __future__ import annotations

import datetime
from typing import Any


class RunledgerError(Exception):
    """Root of every error runledger raises on purpose."""


class ValidationError(RunledgerError, ValueError):
    """Input that runledger refuses before anything touches the database."""


class JobOptionError(ValidationError):
    """A job type, payload or enqueue option is invalid.

    Attributes:
        step_key: the workflow step the option belongs to, or None for a plain job.
    """

    step_key: str | None = None


class WorkflowBuildError(ValidationError):
    """``WorkflowBuilder.build()`` found a mistake in the workflow.

    Attributes:
        workflow_name: the name given to the builder (may be blank when that is the mistake).
    """

    workflow_name: str = ""


def _where(step_key: str | None) -> str:
    return f" on step {step_key!r}" if step_key is not None else ""


# --- options shared by plain jobs and workflow steps -------------------------------------------
# These subclass both roots: Job(...) raises them as JobOptionError, build() as WorkflowBuildError.


class BlankJobType(JobOptionError, WorkflowBuildError):
    """The job type is empty, only white space, or not a string.

    Attributes:
        given: the type name of what was passed instead of a string, or None for a string.
    """

    def __init__(self, *, step_key: str | None = None, given: str | None = None) -> None:
        self.step_key = step_key
        self.given = given
        message = f"job type must be a non-blank string{_where(step_key)}"
        if given == "Job":  # enqueue(conn, Job(...)): the one-job call takes a type, not a Job
            message += ", got a Job: queue a Job with enqueue_many(conn, [job])"
        elif given is not None:
            message += f", got {given}"
        super().__init__(message)


class BlankQueue(JobOptionError, WorkflowBuildError):
    """The queue name is empty or only white space."""

    def __init__(self, *, step_key: str | None = None) -> None:
        self.step_key = step_key
        super().__init__(
            f"queue must be a non-blank string{_where(step_key)}; omit it to use 'default'"
        )


class InvalidMaxAttempts(JobOptionError, WorkflowBuildError):
    """``max_attempts`` is not a positive integer."""

    def __init__(self, *, value: object, step_key: str | None = None) -> None:
        self.value = value
        self.step_key = step_key
        super().__init__(
            f"max_attempts must be a positive integer{_where(step_key)}, got {value!r}"
        )


class InvalidTimeout(JobOptionError, WorkflowBuildError):
    """``timeout_seconds`` is not a positive integer."""

    def __init__(self, *, value: object, step_key: str | None = None) -> None:
        self.value = value
        self.step_key = step_key
        super().__init__(
            f"timeout_seconds must be a positive integer{_where(step_key)}, got {value!r}"
        )


class PriorityOutOfRange(JobOptionError, WorkflowBuildError):
    """``priority`` is not an integer within ``[minimum, maximum]``."""

    def __init__(
        self, *, value: object, minimum: int, maximum: int, step_key: str | None = None
    ) -> None:
        self.value = value
        self.minimum = minimum
        self.maximum = maximum
        self.step_key = step_key
        super().__init__(
            f"priority must be an integer from {minimum} to {maximum}{_where(step_key)} "
            f"(higher runs first), got {value!r}"
        )


class PayloadNotSerializable(JobOptionError, WorkflowBuildError):
    """A payload, input or output holds a value JSON cannot carry.

    Attributes:
        path: where the value sits, as ``$.key[3].other``.
        type_name: the Python type found there.
        reason: what is wrong with it.
    """

    def __init__(
        self, *, path: str, type_name: str, reason: str, step_key: str | None = None
    ) -> None:
        self.path = path
        self.type_name = type_name
        self.reason = reason
        self.step_key = step_key
        super().__init__(f"value at {path}{_where(step_key)} is not JSON: {reason}")


class NulInText(JobOptionError, WorkflowBuildError):
    """A job type, queue or key contains the NUL character, which PostgreSQL text cannot hold.

    Attributes:
        field: which setting (``job_type``, ``queue``, ``idempotency_key``, ``step_key``,
            ``name``).
    """

    def __init__(self, *, field: str, step_key: str | None = None) -> None:
        self.field = field
        self.step_key = step_key
        super().__init__(f"{field}{_where(step_key)} contains a NUL character (\\x00)")


class SurrogateInText(JobOptionError, WorkflowBuildError):
    """A job type, queue, key or reason holds a lone surrogate (``"\\ud800"``).

    Python strings can hold such code points (``surrogateescape`` decoding, a broken JSON
    ``\\ud800`` escape) but UTF-8, and so PostgreSQL, cannot.

    Attributes:
        field: which setting (``job_type``, ``queue``, ``idempotency_key``, ``step_key``,
            ``name``, ``reason``).
        position: the index of the first surrogate in the string.
    """

    def __init__(self, *, field: str, position: int, step_key: str | None = None) -> None:
        self.field = field
        self.position = position
        self.step_key = step_key
        super().__init__(
            f"{field}{_where(step_key)} holds a lone surrogate at index {position}, which "
            "UTF-8 cannot encode; fix the text where it was decoded (errors='replace')"
        )


class TextTooLong(JobOptionError, WorkflowBuildError):
    """A job type, queue, step key, workflow name or idempotency key is over its length limit.

    The limits (``runledger.core.job.MAX_NAME_BYTES``, ``MAX_IDEMPOTENCY_KEY_BYTES``) keep
    every name within PostgreSQL's index entries and NOTIFY payloads; see docs/jobs.md.

    Attributes:
        field: which setting (``job_type``, ``queue``, ``idempotency_key``, ``step_key``,
            ``name``).
        length: its length in bytes of UTF-8.
        limit: the most bytes allowed.
    """

    def __init__(self, *, field: str, length: int, limit: int, step_key: str | None = None) -> None:
        self.field = field
        self.length = length
        self.limit = limit
        self.step_key = step_key
        hint = " (hash a longer key, e.g. hashlib.sha256)" if field == "idempotency_key" else ""
        super().__init__(
            f"{field}{_where(step_key)} is {length:,} bytes of UTF-8; at most {limit:,} "
            f"are allowed{hint}"
        )


class BlankIdempotencyKey(JobOptionError, WorkflowBuildError):
    """An idempotency key was given but is empty or only white space."""

    def __init__(self, *, step_key: str | None = None) -> None:
        self.step_key = step_key
        super().__init__("idempotency key must be a non-blank string, or None for no idempotency")


# --- plain job options ------------------------------------------------------------------------


class NaiveRunAt(JobOptionError):
    """``run_at`` is a datetime without a timezone."""

    def __init__(self, *, run_at: object) -> None:
        self.run_at = run_at
        super().__init__(
            f"run_at must be timezone-aware (for example datetime.now(timezone.utc)), "
            f"got naive {run_at!r}"
        )


class InvalidDelay(JobOptionError):
    """``delay`` is negative, over the maximum, or not a duration.

    Attributes:
        delay: what was given.
        maximum: the longest delay allowed (``runledger.core.job.MAX_DELAY``).
    """

    def __init__(self, *, delay: object, maximum: datetime.timedelta) -> None:
        self.delay = delay
        self.maximum = maximum
        super().__init__(
            f"delay must be a timedelta or number of seconds from 0 to {maximum.days:,} days "
            f"({maximum.total_seconds():,.0f} s), got {delay!r}"
        )


class RunAtOutOfRange(JobOptionError):
    """``run_at`` is outside the range every PostgreSQL session can read back into Python.

    Attributes:
        run_at: what was given.
        minimum: the earliest start allowed (``runledger.core.job.MIN_RUN_AT``).
        maximum: the latest start allowed (``runledger.core.job.MAX_RUN_AT``).
    """

    def __init__(
        self, *, run_at: object, minimum: datetime.datetime, maximum: datetime.datetime
    ) -> None:
        self.run_at = run_at
        self.minimum = minimum
        self.maximum = maximum
        super().__init__(
            f"run_at must be from {minimum.isoformat()} to {maximum.isoformat()}, got {run_at!r}"
        )


class PayloadTooLarge(JobOptionError):
    """A payload, workflow input or external output is over the payload size limit.

    The limit is ``max_payload_bytes=`` of the call, else the ``RUNLEDGER_MAX_PAYLOAD_BYTES``
    environment variable, else ``runledger.core.payload.MAX_PAYLOAD_BYTES`` (1 MiB).

    Attributes:
        path: which value: ``$`` (a job's or step's payload), ``$input`` or ``$output``.
        size: its canonical JSON text's size in bytes of UTF-8.
        limit: the most bytes allowed.
    """

    def __init__(self, *, path: str, size: int, limit: int, step_key: str | None = None) -> None:
        self.path = path
        self.size = size
        self.limit = limit
        self.step_key = step_key
        super().__init__(
            f"the JSON at {path}{_where(step_key)} is {size:,} bytes; the limit is {limit:,}: "
            "store large data elsewhere and pass its key, or raise the limit with "
            "max_payload_bytes= or RUNLEDGER_MAX_PAYLOAD_BYTES"
        )


class ConflictingRunAt(JobOptionError):
    """Both ``run_at`` and ``delay`` were given; a job takes one or the other."""

    def __init__(self, *, run_at: object, delay: object) -> None:
        self.run_at = run_at
        self.delay = delay
        super().__init__("give run_at or delay, not both")


class InvalidUnique(JobOptionError):
    """``unique`` is not a ``runledger.Unique``, its period is not a positive duration, or it
    was given without an ``idempotency_key`` (a window needs a key to hold).

    Attributes:
        given: what was given (the ``unique`` value, or its period).
        reason: what is wrong with it.
    """

    def __init__(self, *, given: object, reason: str) -> None:
        self.given = given
        self.reason = reason
        super().__init__(
            f"unique={given!r}: {reason}; use Unique.forever(), Unique.active() or "
            "Unique.within(timedelta(...)) together with an idempotency_key"
        )


class InvalidConcurrencyKey(JobOptionError, WorkflowBuildError):
    """``concurrency_key`` is blank or not a string, or ``concurrency_limit`` is not a
    positive integer or was given without a key.

    Attributes:
        key: the key given.
        limit: the limit given.
        reason: what is wrong with them.
    """

    def __init__(
        self, *, key: object, limit: object, reason: str, step_key: str | None = None
    ) -> None:
        self.key = key
        self.limit = limit
        self.reason = reason
        self.step_key = step_key
        super().__init__(
            f"concurrency_key={key!r}, concurrency_limit={limit!r}{_where(step_key)}: {reason}"
        )


class InvalidQueueLimit(ValidationError):
    """A queue limit given to ``set_queue_limits`` is out of range.

    Attributes:
        queue: the queue.
        field: ``concurrency``, ``rate`` or ``per``.
        value: what was given.
        reason: what is wrong with it.
    """

    def __init__(self, *, queue: str, field: str, value: object, reason: str) -> None:
        self.queue = queue
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"queue {queue!r}: {field}={value!r} {reason}")


# --- workflow structure -----------------------------------------------------------------------


class EmptyWorkflow(WorkflowBuildError):
    """The workflow has no steps."""

    def __init__(self, *, workflow_name: str) -> None:
        self.workflow_name = workflow_name
        super().__init__(f"workflow {workflow_name!r} has no steps; add one with .step(key)")


class BlankWorkflowName(WorkflowBuildError):
    """The workflow name is empty or only white space."""

    def __init__(self, *, workflow_name: str) -> None:
        self.workflow_name = workflow_name
        super().__init__("workflow name must be a non-blank string")


class BlankStepKey(WorkflowBuildError):
    """A step key is empty or only white space.

    Attributes:
        index: the position of the step in the order it was added (0-based).
    """

    def __init__(self, *, workflow_name: str, index: int) -> None:
        self.workflow_name = workflow_name
        self.index = index
        super().__init__(f"step #{index} of workflow {workflow_name!r} has a blank key")


class DuplicateStepKey(WorkflowBuildError):
    """Two steps share a key."""

    def __init__(self, *, workflow_name: str, step_key: str) -> None:
        self.workflow_name = workflow_name
        self.step_key = step_key
        super().__init__(
            f"step key {step_key!r} is used twice in workflow {workflow_name!r}; keys are unique"
        )


class MissingJobType(WorkflowBuildError):
    """A step is neither a job (``.job(type)``) nor external (``.external()``)."""

    def __init__(self, *, workflow_name: str, step_key: str) -> None:
        self.workflow_name = workflow_name
        self.step_key = step_key
        super().__init__(
            f"step {step_key!r} has no job type; call .job('type') or .external() on it"
        )


class ExternalStepWithJobSettings(WorkflowBuildError):
    """An external step was given settings that only a job step can use.

    Attributes:
        settings: the names of the offending settings, sorted.
    """

    def __init__(self, *, workflow_name: str, step_key: str, settings: tuple[str, ...]) -> None:
        self.workflow_name = workflow_name
        self.step_key = step_key
        self.settings = settings
        super().__init__(
            f"external step {step_key!r} cannot have {', '.join(settings)}; "
            "an external step waits for complete_external_step() and runs no job"
        )


class UnknownDependency(WorkflowBuildError):
    """A step names a prerequisite that is not a step of the workflow."""

    def __init__(self, *, workflow_name: str, step_key: str, prerequisite: str) -> None:
        self.workflow_name = workflow_name
        self.step_key = step_key
        self.prerequisite = prerequisite
        super().__init__(
            f"step {step_key!r} depends on {prerequisite!r}, which is not a step of "
            f"workflow {workflow_name!r}"
        )


class SelfDependency(WorkflowBuildError):
    """A step lists itself as a prerequisite."""

    def __init__(self, *, workflow_name: str, step_key: str) -> None:
        self.workflow_name = workflow_name
        self.step_key = step_key
        super().__init__(f"step {step_key!r} cannot depend on itself")


class DuplicateDependency(WorkflowBuildError):
    """A step lists the same prerequisite twice (also across after/after_terminal)."""

    def __init__(self, *, workflow_name: str, step_key: str, prerequisite: str) -> None:
        self.workflow_name = workflow_name
        self.step_key = step_key
        self.prerequisite = prerequisite
        super().__init__(f"step {step_key!r} lists prerequisite {prerequisite!r} more than once")


class CycleDetected(WorkflowBuildError):
    """The dependencies form a cycle.

    Attributes:
        step_keys: the keys on one cycle, in dependency order; each depends on the one before
            it and the first depends on the last.
    """

    def __init__(self, *, workflow_name: str, step_keys: tuple[str, ...]) -> None:
        self.workflow_name = workflow_name
        self.step_keys = step_keys
        loop = " -> ".join((*step_keys, step_keys[0]))
        super().__init__(f"workflow {workflow_name!r} has a dependency cycle: {loop}")


class UnknownResultStep(WorkflowBuildError):
    """``result_step(key)`` names a step that is not in the workflow."""

    def __init__(self, *, workflow_name: str, step_key: str) -> None:
        self.workflow_name = workflow_name
        self.step_key = step_key
        super().__init__(f"result step {step_key!r} is not a step of workflow {workflow_name!r}")


class BuilderMisuse(WorkflowBuildError):
    """A step setting was called before any ``.step(key)``."""

    def __init__(self, *, workflow_name: str, method: str) -> None:
        self.workflow_name = workflow_name
        self.method = method
        super().__init__(f".{method}() sets a step; call .step(key) before it")


class InvalidId(ValidationError):
    """A job or run id is not a UUID (a ``uuid.UUID`` or its text form).

    Attributes:
        field: the argument (``job_id``, ``run_id``, ``workflow_run_id``).
        value: what was given.
    """

    def __init__(self, *, field: str, value: object) -> None:
        self.field = field
        self.value = value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{field} must be a UUID (uuid.UUID or its text), got {shown}")


class InvalidCron(ValidationError):
    """A schedule's cron expression does not parse, can never fire, or its name is blank.

    Attributes:
        name: the schedule's name, or None when the expression was checked on its own.
        cron: the expression.
        reason: what is wrong with it.
    """

    def __init__(self, *, cron: str, reason: str, name: str | None = None) -> None:
        self.name = name
        self.cron = cron
        self.reason = reason
        where = "" if name is None else f"schedule {name!r}: "
        super().__init__(f"{where}invalid cron expression {cron!r}: {reason}")


class UnknownTimezone(ValidationError):
    """A schedule names a timezone the zoneinfo database does not know."""

    def __init__(self, *, name: str, timezone: str) -> None:
        self.name = name
        self.timezone = timezone
        super().__init__(
            f"schedule {name!r}: unknown timezone {timezone!r}; use an IANA name "
            "such as 'UTC' or 'Europe/Paris'"
        )


class ConfigError(RunledgerError, ValueError):
    """A setting does not parse or is out of range.

    The setting is a ``RUNLEDGER_*`` environment variable, a command-line option, a Flask or
    Django setting, or a ``Runtime(...)`` argument.

    Attributes:
        name: the variable, option or argument, as the user wrote it.
        value: the value given (a string when it came from text).
        expected: what would be accepted.
    """

    def __init__(self, *, name: str, value: object, expected: str) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        super().__init__(f"{name}={value!r}: expected {expected}")


def describe(value: Any) -> str:
    """The type name used in error messages (``datetime.datetime`` style for non-builtins)."""
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
