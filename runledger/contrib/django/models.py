"""Read-only Django models over the ``runledger`` schema, for the admin and ORM queries.

Unmanaged (``managed = False``): runledger's own migrations own the tables, and every
change goes through runledger's functions (``cancel_job``, ``requeue``, ...), which keep
the ledger consistent; saving or deleting these models raises ``TypeError``. The tables
live in the ``runledger`` schema; ``db_table = 'runledger"."jobs'`` makes Django quote it
as ``"runledger"."jobs"``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models

from runledger.core.status import AttemptOutcome, JobStatus, RunStatus, StepKind, StepStatus


def _choices(enum: Any) -> list[tuple[str, str]]:
    return [(member.value, member.value.replace("_", " ")) for member in enum]


class LedgerModel(models.Model):
    """A row that only runledger writes."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Refused: use runledger's functions, which keep the ledger consistent."""
        raise TypeError(f"{type(self).__name__} rows are written by runledger only")

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: use runledger's functions, which keep the ledger consistent."""
        raise TypeError(f"{type(self).__name__} rows are written by runledger only")


class WorkflowRun(LedgerModel):
    """A row of ``runledger.workflow_runs``."""

    id = models.UUIDField(primary_key=True)
    name = models.TextField()
    idempotency_key = models.TextField(null=True)
    input = models.JSONField()
    status = models.TextField(choices=_choices(RunStatus))
    result_step = models.TextField(null=True)
    result = models.JSONField(null=True)
    steps_total = models.IntegerField()
    steps_open = models.IntegerField()
    steps_active = models.IntegerField()
    steps_unsuccessful = models.IntegerField()
    cancel_reason = models.TextField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = 'runledger"."workflow_runs'
        ordering: ClassVar = ["-created_at"]
        verbose_name = "workflow run"

    def __str__(self) -> str:
        return f"{self.name} {self.id}"


class Job(LedgerModel):
    """A row of ``runledger.jobs``."""

    id = models.UUIDField(primary_key=True)
    queue = models.TextField()
    job_type = models.TextField()
    payload = models.JSONField()
    status = models.TextField(choices=_choices(JobStatus))
    priority = models.SmallIntegerField()
    attempt = models.IntegerField()
    max_attempts = models.IntegerField(null=True)
    timeout_seconds = models.IntegerField(null=True)
    run_at = models.DateTimeField()
    lease_owner = models.TextField(null=True)
    lease_expires_at = models.DateTimeField(null=True)
    started_at = models.DateTimeField(null=True)
    idempotency_key = models.TextField(null=True)
    workflow_run = models.ForeignKey(
        WorkflowRun,
        models.DO_NOTHING,
        null=True,
        db_constraint=False,
        related_name="jobs",
    )
    step_key = models.TextField(null=True)
    output = models.JSONField(null=True)
    last_error = models.TextField(null=True)
    cancel_reason = models.TextField(null=True)
    schedule_name = models.TextField(null=True)
    scheduled_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)
    progress = models.JSONField(null=True)  # ctx.progress's latest report (schema 0006)

    class Meta:
        managed = False
        db_table = 'runledger"."jobs'
        ordering: ClassVar = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.job_type} {self.id}"


class JobAttempt(LedgerModel):
    """A row of ``runledger.job_attempts``."""

    id = models.BigIntegerField(primary_key=True)
    job = models.ForeignKey(Job, models.DO_NOTHING, db_constraint=False, related_name="attempts")
    attempt = models.IntegerField()
    worker = models.TextField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)
    outcome = models.TextField(choices=_choices(AttemptOutcome), null=True)
    error_type = models.TextField(null=True)
    error_message = models.TextField(null=True)
    error_traceback = models.TextField(null=True)
    retry_at = models.DateTimeField(null=True)
    retry_reason = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = 'runledger"."job_attempts'
        ordering: ClassVar = ["job_id", "attempt", "id"]

    def __str__(self) -> str:
        return f"attempt {self.attempt} of {self.job_id}"


class WorkflowStepRun(LedgerModel):
    """A row of ``runledger.workflow_step_runs``."""

    id = models.BigIntegerField(primary_key=True)
    workflow_run = models.ForeignKey(
        WorkflowRun, models.DO_NOTHING, db_constraint=False, related_name="steps"
    )
    step_key = models.TextField()
    kind = models.TextField(choices=_choices(StepKind))
    job_type = models.TextField(null=True)
    queue = models.TextField(null=True)
    priority = models.SmallIntegerField(null=True)
    max_attempts = models.IntegerField(null=True)
    timeout_seconds = models.IntegerField(null=True)
    payload = models.JSONField(null=True)
    status = models.TextField(choices=_choices(StepStatus))
    deps_total = models.IntegerField()
    deps_pending = models.IntegerField()
    job = models.ForeignKey(
        Job, models.DO_NOTHING, null=True, db_constraint=False, related_name="+"
    )
    output = models.JSONField(null=True)
    error = models.TextField(null=True)
    posted_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = 'runledger"."workflow_step_runs'
        ordering: ClassVar = ["workflow_run_id", "id"]
        verbose_name = "workflow step"

    def __str__(self) -> str:
        return f"{self.step_key} of {self.workflow_run_id}"


class Schedule(LedgerModel):
    """A row of ``runledger.schedules``."""

    name = models.TextField(primary_key=True)
    origin = models.TextField()
    cron = models.TextField()
    timezone = models.TextField()
    job_type = models.TextField()
    payload = models.JSONField()
    queue = models.TextField()
    priority = models.SmallIntegerField()
    max_attempts = models.IntegerField(null=True)
    timeout_seconds = models.IntegerField(null=True)
    enabled = models.BooleanField()
    next_run_at = models.DateTimeField()
    last_run_at = models.DateTimeField(null=True)
    last_job_id = models.UUIDField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = 'runledger"."schedules'
        ordering: ClassVar = ["name"]

    def __str__(self) -> str:
        return str(self.name)


class Queue(LedgerModel):
    """A row of ``runledger.queues``: a queue's flow-control settings (schema 0009).

    Only queues that were ever limited or paused have a row. Change them with
    ``runledger.set_queue_limits``, ``pause_queue`` and ``resume_queue`` (the admin does),
    which write the ``queue.*`` events; the claim's rate window (``window_start``,
    ``window_starts``) is not mapped.
    """

    queue = models.TextField(primary_key=True)
    paused = models.BooleanField()
    paused_at = models.DateTimeField(null=True)
    paused_by = models.TextField(null=True)
    concurrency = models.IntegerField(null=True, blank=True)
    rate = models.IntegerField(null=True, blank=True)
    per_seconds = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = 'runledger"."queues'
        ordering: ClassVar = ["queue"]

    def __str__(self) -> str:
        return str(self.queue)
