"""Read-only admin pages for jobs, workflow runs and steps, and schedules, with actions that go
through runledger's functions: cancel and requeue jobs, cancel runs, pause and resume
schedules.

Nothing can be added, edited or deleted here. The actions need the model's ``change``
permission (superusers have it); viewing needs ``view``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from runledger.core.progress import describe_progress
from runledger.errors import (
    JobNotFound,
    RunledgerError,
    ScheduleNotFound,
    WorkflowRunNotFound,
)
from runledger.postgres.cancellation import cancel_job, cancel_workflow, requeue
from runledger.postgres.schedules import pause_schedule, resume_schedule

from .connection import psycopg_connection
from .models import Job, JobAttempt, Schedule, WorkflowRun, WorkflowStepRun


def _reason(request: HttpRequest) -> str:
    return f"cancelled in the Django admin by {request.user.get_username()}"


class LedgerAdmin(admin.ModelAdmin):
    """A read-only model admin whose actions need the model's ``change`` permission."""

    show_full_result_count = False  # a count(*) of a large ledger on every page is slow

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never: runledger writes the ledger."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never: the pages are read-only (the actions use ``has_operate_permission``)."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never: runledger writes the ledger."""
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """May the user run this page's actions (cancel, requeue, pause, resume)?"""
        opts = self.opts
        return bool(request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}"))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Every field."""
        return [field.name for field in self.opts.fields]

    def _link(self, model: type[Model], pk: Any, label: str | None = None) -> str:
        if pk is None:
            return "-"
        opts = model._meta
        url = reverse(
            f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change", args=[pk]
        )
        return cast(str, format_html('<a href="{}">{}</a>', url, label or pk))

    def _each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        apply: Callable[[Any, Any], bool],
        done: str,
        skipped: str,
    ) -> None:
        """Apply a runledger function to each selected row, each in its own short
        transaction (or the request's, with ``ATOMIC_REQUESTS``); report the counts."""
        keys = list(queryset.values_list("pk", flat=True))
        conn = psycopg_connection(queryset.db)
        changed, unchanged, refused = 0, 0, []
        for key in keys:
            try:
                if apply(conn, key):
                    changed += 1
                else:
                    unchanged += 1
            except (JobNotFound, WorkflowRunNotFound, ScheduleNotFound):
                unchanged += 1
            except RunledgerError as err:
                refused.append(f"{key}: {err}")
        self.message_user(request, f"{changed} {done}.", messages.SUCCESS)
        if unchanged:
            self.message_user(request, f"{unchanged} {skipped}.", messages.WARNING)
        for message in refused:
            self.message_user(request, message, messages.ERROR)


class JobAttemptInline(admin.TabularInline):
    """A job's attempts, oldest first."""

    model = JobAttempt
    extra = 0
    can_delete = False
    fields = (
        "attempt",
        "worker",
        "started_at",
        "finished_at",
        "outcome",
        "error_type",
        "error_message",
        "retry_at",
        "retry_reason",
    )
    readonly_fields = fields
    ordering = ("attempt", "id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never."""
        return False


@admin.register(Job)
class JobAdmin(LedgerAdmin):
    """``runledger.jobs``: filter by status, queue and type; cancel or requeue."""

    list_display = (
        "id",
        "job_type",
        "queue",
        "status",
        "priority",
        "attempt",
        "progress_text",
        "run_at",
        "created_at",
        "finished_at",
        "workflow_run_link",
    )
    list_filter = ("status", "queue", "job_type")
    search_fields = ("job_type", "idempotency_key", "last_error")
    inlines = (JobAttemptInline,)
    actions = ("cancel_jobs", "requeue_jobs")

    @admin.display(description="progress")
    def progress_text(self, job: Job) -> str:
        """The handler's latest ``ctx.progress``, in one line (``40% page 4 of 10``)."""
        return describe_progress(job.progress)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """Every field, and the progress in one line beside its stored JSON."""
        return [*super().get_readonly_fields(request, obj), "progress_text"]

    @admin.display(description="workflow run")
    def workflow_run_link(self, job: Job) -> str:
        """The job's workflow run, linked."""
        return self._link(WorkflowRun, job.workflow_run_id)

    @admin.action(description="Cancel selected jobs", permissions=["operate"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """``runledger.cancel_job`` each job (a workflow step cascades to its dependents)."""
        reason = _reason(request)
        self._each(
            request,
            queryset,
            lambda conn, pk: cancel_job(conn, pk, reason=reason),
            "jobs cancelled",
            "jobs had already finished",
        )

    @admin.action(description="Requeue selected failed or cancelled jobs", permissions=["operate"])
    def requeue_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        """``runledger.requeue`` each job (not workflow steps, nor succeeded jobs)."""
        self._each(request, queryset, requeue, "jobs requeued", "jobs were still queued or running")


class StepInline(admin.TabularInline):
    """A run's steps in topological order."""

    model = WorkflowStepRun
    extra = 0
    can_delete = False
    fields = ("step_key", "kind", "status", "job_type", "deps_pending", "job_link", "error")
    readonly_fields = fields
    ordering = ("id",)

    @admin.display(description="job")
    def job_link(self, step: WorkflowStepRun) -> str:
        """The step's job, linked."""
        if step.job_id is None:
            return "-"
        url = reverse(f"{self.admin_site.name}:runledger_job_change", args=[step.job_id])
        return cast(str, format_html('<a href="{}">{}</a>', url, step.job_id))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Never."""
        return False


@admin.register(WorkflowRun)
class WorkflowRunAdmin(LedgerAdmin):
    """``runledger.workflow_runs`` with their steps; cancel runs."""

    list_display = (
        "id",
        "name",
        "status",
        "steps_total",
        "steps_open",
        "steps_unsuccessful",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "name")
    search_fields = ("name", "idempotency_key")
    inlines = (StepInline,)
    actions = ("cancel_runs",)

    @admin.action(description="Cancel selected workflow runs", permissions=["operate"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        """``runledger.cancel_workflow`` each run."""
        reason = _reason(request)
        self._each(
            request,
            queryset,
            lambda conn, pk: cancel_workflow(conn, pk, reason=reason),
            "workflow runs cancelled",
            "workflow runs had already finished",
        )


@admin.register(WorkflowStepRun)
class WorkflowStepRunAdmin(LedgerAdmin):
    """``runledger.workflow_step_runs``: every step of every run."""

    list_display = ("step_key", "run_link", "kind", "status", "job_type", "job_link", "updated_at")
    list_filter = ("status", "kind")
    search_fields = ("step_key", "job_type")
    list_select_related = ("workflow_run",)

    @admin.display(description="workflow run")
    def run_link(self, step: WorkflowStepRun) -> str:
        """The step's run, linked."""
        return self._link(WorkflowRun, step.workflow_run_id, str(step.workflow_run))

    @admin.display(description="job")
    def job_link(self, step: WorkflowStepRun) -> str:
        """The step's job, linked."""
        return self._link(Job, step.job_id)


@admin.register(Schedule)
class ScheduleAdmin(LedgerAdmin):
    """``runledger.schedules``; pause and resume."""

    list_display = (
        "name",
        "cron",
        "timezone",
        "job_type",
        "queue",
        "enabled",
        "next_run_at",
        "last_run_at",
    )
    list_filter = ("enabled", "queue")
    search_fields = ("name", "job_type")
    actions = ("pause_schedules", "resume_schedules")

    @admin.action(description="Pause selected schedules", permissions=["operate"])
    def pause_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        """``runledger.pause_schedule`` each schedule."""
        self._each(request, queryset, _paused, "schedules paused", "schedules were gone")

    @admin.action(description="Resume selected schedules", permissions=["operate"])
    def resume_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        """``runledger.resume_schedule`` each schedule (missed ticks are skipped)."""
        self._each(request, queryset, _resumed, "schedules resumed", "schedules were gone")


def _paused(conn: Any, name: str) -> bool:
    pause_schedule(conn, name)
    return True


def _resumed(conn: Any, name: str) -> bool:
    resume_schedule(conn, name)
    return True
