"""Frozen records returned by the reads: one class per ledger table, fields named as columns."""

from __future__ import annotations

import datetime
import uuid

import attrs

from runledger.core.payload import JsonValue
from runledger.core.status import (
    AttemptOutcome,
    EventKind,
    JobStatus,
    ReleaseMode,
    RetryReason,
    RunStatus,
    StepKind,
    StepStatus,
)


def _outcome(value: str | None) -> AttemptOutcome | None:
    return None if value is None else AttemptOutcome(value)


def _retry_reason(value: str | None) -> RetryReason | None:
    return None if value is None else RetryReason(value)


@attrs.frozen(kw_only=True)
class JobRecord:
    """A row of ``runledger.jobs``."""

    id: uuid.UUID
    queue: str
    job_type: str
    payload: JsonValue
    status: JobStatus = attrs.field(converter=JobStatus)
    priority: int
    attempt: int
    max_attempts: int | None
    timeout_seconds: int | None
    run_at: datetime.datetime
    lease_token: uuid.UUID | None
    lease_owner: str | None
    lease_expires_at: datetime.datetime | None
    started_at: datetime.datetime | None
    idempotency_key: str | None
    workflow_run_id: uuid.UUID | None
    step_key: str | None
    output: JsonValue
    last_error: str | None
    cancel_reason: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    finished_at: datetime.datetime | None
    progress: JsonValue = None
    """The latest progress its handler reported (``ctx.progress``), or None: an object with
    ``fraction`` (0..1) or ``value`` (any JSON), maybe ``note``, and the ``attempt`` and time
    (``at``) of the report. See ``runledger.core.progress``."""
    concurrency_key: str | None = None
    """Its concurrency key (``docs/flow-control.md``), or None."""
    concurrency_limit: int | None = None
    """How many jobs with its key may run at once, or None without a key."""


@attrs.frozen(kw_only=True)
class AttemptRecord:
    """A row of ``runledger.job_attempts``: one attempt of a job."""

    job_id: uuid.UUID
    attempt: int
    worker: str
    lease_token: uuid.UUID
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    outcome: AttemptOutcome | None = attrs.field(converter=_outcome)
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    retry_at: datetime.datetime | None
    retry_reason: RetryReason | None = attrs.field(converter=_retry_reason)


@attrs.frozen(kw_only=True)
class StepRecord:
    """A row of ``runledger.workflow_step_runs``."""

    id: int
    step_key: str
    kind: StepKind = attrs.field(converter=StepKind)
    job_type: str | None
    queue: str | None
    priority: int | None
    max_attempts: int | None
    timeout_seconds: int | None
    payload: JsonValue
    status: StepStatus = attrs.field(converter=StepStatus)
    deps_total: int
    deps_pending: int
    job_id: uuid.UUID | None
    output: JsonValue
    error: str | None
    posted_at: datetime.datetime | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    finished_at: datetime.datetime | None


@attrs.frozen(kw_only=True)
class EdgeRecord:
    """A row of ``runledger.workflow_step_deps``: ``step_key`` waits for ``prerequisite_key``."""

    step_key: str
    prerequisite_key: str
    release_mode: ReleaseMode = attrs.field(converter=ReleaseMode)


@attrs.frozen(kw_only=True)
class WorkflowRunRecord:
    """A row of ``runledger.workflow_runs`` with its steps (in order) and edges."""

    id: uuid.UUID
    name: str
    idempotency_key: str | None
    input: JsonValue
    status: RunStatus = attrs.field(converter=RunStatus)
    result_step: str | None
    result: JsonValue
    steps_total: int
    steps_open: int
    steps_active: int
    steps_unsuccessful: int
    cancel_reason: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    finished_at: datetime.datetime | None
    steps: tuple[StepRecord, ...] = ()
    edges: tuple[EdgeRecord, ...] = ()

    def step(self, key: str) -> StepRecord:
        """The step with this key; raises ``KeyError`` if there is none."""
        for step in self.steps:
            if step.step_key == key:
                return step
        raise KeyError(key)


@attrs.frozen(kw_only=True)
class EventRecord:
    """A row of ``runledger.events``."""

    id: int
    occurred_at: datetime.datetime
    kind: EventKind = attrs.field(converter=EventKind)
    job_id: uuid.UUID | None
    workflow_run_id: uuid.UUID | None
    step_key: str | None
    attempt: int | None
    data: JsonValue
    queue: str | None = None
