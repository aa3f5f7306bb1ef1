"""The statuses and outcomes stored in the ledger; the values are the schema's CHECKed text."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is. ``queued`` includes scheduled and awaiting-retry jobs."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the job will not run again by itself."""
        return self in _TERMINAL_JOB


_TERMINAL_JOB = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class StepStatus(StrEnum):
    """Where a workflow step is."""

    BLOCKED = "blocked"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the step has an outcome."""
        return self in _TERMINAL_STEP


_TERMINAL_STEP = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED})


class RunStatus(StrEnum):
    """Where a workflow run is. ``waiting``: only external steps are outstanding."""

    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once every step of the run has an outcome (or the run was cancelled)."""
        return self not in (RunStatus.RUNNING, RunStatus.WAITING)


class StepKind(StrEnum):
    """A step either runs a job or waits for an external signal."""

    JOB = "job"
    EXTERNAL = "external"


class ReleaseMode(StrEnum):
    """When a prerequisite releases its dependent: on success only, or on any outcome."""

    ON_SUCCESS = "on_success"
    ON_TERMINAL = "on_terminal"


class AttemptOutcome(StrEnum):
    """How one attempt of a job ended.

    ``released`` marks an attempt whose handler never started, handed back at shutdown or by
    the reaper after its worker died (at most ``UNCOUNTED_RELEASES`` times a job, see
    ``runledger.runtime.reaper``); it does not count against ``max_attempts``. ``snoozed``
    marks an attempt whose handler raised ``Snooze``: the job is queued again for later, and
    the attempt does not count either.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    LEASE_EXPIRED = "lease_expired"
    CANCELLED = "cancelled"
    RELEASED = "released"
    SNOOZED = "snoozed"


class RetryReason(StrEnum):
    """Who chose the time of the next attempt."""

    POLICY = "policy"
    HANDLER = "handler"


class EventKind(StrEnum):
    """The kinds of row in ``runledger.events``."""

    JOB_ENQUEUED = "job.enqueued"
    JOB_STARTED = "job.started"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_RETRYING = "job.retrying"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_REQUEUED = "job.requeued"
    JOB_RELEASED = "job.released"
    JOB_SNOOZED = "job.snoozed"
    RUN_ENQUEUED = "run.enqueued"
    RUN_WAITING = "run.waiting"
    RUN_RESUMED = "run.resumed"
    RUN_SUCCEEDED = "run.succeeded"
    RUN_COMPLETED_WITH_ERRORS = "run.completed_with_errors"
    RUN_CANCELLED = "run.cancelled"
    RUN_RETRIED = "run.retried"
    STEP_QUEUED = "step.queued"
    STEP_WAITING = "step.waiting"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_CANCELLED = "step.cancelled"
    QUEUE_PAUSED = "queue.paused"
    QUEUE_RESUMED = "queue.resumed"
    QUEUE_LIMITED = "queue.limited"
