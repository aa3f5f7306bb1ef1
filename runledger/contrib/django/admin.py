"""Admin pages for jobs, workflow runs and steps, schedules and queues, with actions that go
through runledger's functions: cancel and requeue jobs, cancel runs, pause and resume
schedules and queues, and set queue limits.

Ledger rows cannot be added, edited or deleted here; the actions need the model's ``change``
permission (superusers have it); viewing needs ``view``. The one form is the queue's (add
and change need ``add_queue`` and ``change_queue``): it calls ``set_queue_limits``,
``pause_queue`` and ``resume_queue``, never the ORM, so each change writes its event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from django import forms
from django.contrib import admin, messages
from django.db import router
from django.db.models import Count, IntegerField, Model, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from runledger.core.job import check_queue
from runledger.core.limits import check_queue_limits
from runledger.core.progress import describe_progress
from runledger.errors import (
    InvalidQueueLimit,
    JobNotFound,
    RunledgerError,
    ScheduleNotFound,
    ValidationError,
    WorkflowRunNotFound,
)
from runledger.postgres.cancellation import cancel_job, cancel_workflow, requeue
from runledger.postgres.queues import (
    KEEP,
    pause_queue,
    queue_settings,
    resume_queue,
    set_queue_limits,
)
from runledger.postgres.schedules import pause_schedule, resume_schedule

from .connection import psycopg_connection
from .models import Job, JobAttempt, Queue, Schedule, WorkflowRun, WorkflowStepRun


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


def _paused_queue(by: str) -> Callable[[Any, str], bool]:
    def pause(conn: Any, queue: str) -> bool:
        was = queue_settings(conn, queue)
        pause_queue(conn, queue, by=by, reason="paused in the Django admin")
        return not bool(was.paused)

    return pause


def _resumed_queue(by: str) -> Callable[[Any, str], bool]:
    def resume(conn: Any, queue: str) -> bool:
        was = queue_settings(conn, queue)
        resume_queue(conn, queue, by=by)
        return bool(was.paused)

    return resume


def _jobs(status: str) -> Coalesce:
    """The number of the queue's jobs in ``status`` (the partial indexes of running and
    queued jobs serve it)."""
    counted = (
        Job.objects.filter(queue=OuterRef("queue"), status=status)
        .order_by()
        .values("queue")
        .annotate(n=Count("*"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


class QueueForm(forms.ModelForm):
    """A queue's limits and pause, validated as ``set_queue_limits`` validates them."""

    pause_reason = forms.CharField(
        required=False,
        help_text="Recorded in the queue.paused event when this change pauses the queue.",
    )

    class Meta:
        model = Queue
        fields = ("queue", "paused", "concurrency", "rate", "per_seconds")
        widgets: ClassVar = {"queue": forms.TextInput}
        labels: ClassVar = {"per_seconds": "per (seconds)"}
        help_texts: ClassVar = {
            "paused": "No runtime claims a paused queue's jobs; running jobs run to their end.",
            "concurrency": "The most of its jobs running at once across all runtimes; "
            "blank for no limit.",
            "rate": "The most starts per window across all runtimes; blank for no limit.",
            "per_seconds": "The rate's window in seconds (blank: the current one, else 1).",
        }

    def clean(self) -> dict[str, Any]:
        """Refuse what ``set_queue_limits`` would refuse, on the form, before writing."""
        cleaned: dict[str, Any] = super().clean() or {}
        # The name is a field when adding, read-only (the instance's) when changing.
        queue = cleaned.get("queue") if "queue" in self.fields else self.instance.queue
        if queue is None:  # the field's own error says why
            return cleaned
        per = cleaned.get("per_seconds")
        try:
            check_queue(queue)
            check_queue_limits(
                queue,
                concurrency=cleaned.get("concurrency"),
                rate=cleaned.get("rate"),
                per=1.0 if per is None else per,
            )
        except InvalidQueueLimit as err:
            self.add_error({"per": "per_seconds"}.get(err.field, err.field), str(err))
        except ValidationError as err:  # BlankQueue, TextTooLong: the name
            self.add_error("queue", str(err))
        return cleaned


@admin.register(Queue)
class QueueAdmin(LedgerAdmin):
    """``runledger.queues`` with each queue's running and queued jobs; pause and resume, and
    a form for a queue's limits, through runledger's functions (so events name the user)."""

    form = QueueForm
    list_display = (
        "queue",
        "paused",
        "paused_by",
        "paused_at",
        "running_jobs",
        "rate_limit",
        "queued_jobs",
        "updated_at",
    )
    list_filter = ("paused",)
    search_fields = ("queue",)
    actions = ("pause_queues", "resume_queues")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Queue]:
        """The settings with ``running`` and ``queued`` counts."""
        return (
            super().get_queryset(request).annotate(running=_jobs("running"), queued=_jobs("queued"))
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """With ``add_queue``: the form limits or pauses a queue that has no settings yet."""
        return bool(admin.ModelAdmin.has_add_permission(self, request))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """With ``change_queue``: the form calls runledger's functions, never ``save()``."""
        return bool(admin.ModelAdmin.has_change_permission(self, request, obj))

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """The form's fields, then (for an existing queue) when and by whom it was paused."""
        editable = ["queue", "paused", "pause_reason", "concurrency", "rate", "per_seconds"]
        return editable if obj is None else [*editable, "paused_at", "paused_by", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """The name once the queue exists, and the pause's time and author."""
        return [] if obj is None else ["queue", "paused_at", "paused_by", "updated_at"]

    @admin.display(description="running", ordering="running")
    def running_jobs(self, queue: Queue) -> str:
        """Running jobs, over the concurrency limit when there is one (``2/5``)."""
        running = getattr(queue, "running", 0)
        return str(running) if queue.concurrency is None else f"{running}/{queue.concurrency}"

    @admin.display(description="queued", ordering="queued")
    def queued_jobs(self, queue: Queue) -> int:
        """Queued jobs, due or not."""
        return int(getattr(queue, "queued", 0))

    @admin.display(description="rate")
    def rate_limit(self, queue: Queue) -> str:
        """``10/s`` or ``100/60s``; "-" without a rate limit."""
        if queue.rate is None:
            return "-"
        per = 1.0 if queue.per_seconds is None else queue.per_seconds
        return f"{queue.rate}/s" if per == 1 else f"{queue.rate}/{per:g}s"

    def save_model(self, request: HttpRequest, obj: Queue, form: Any, change: bool) -> None:
        """Apply the form with ``set_queue_limits``, ``pause_queue`` and ``resume_queue`` in
        the admin's transaction, ``by`` the user; only what changed (a new queue's limits
        always), so each event records a real change."""
        data = form.cleaned_data
        by = request.user.get_username()
        # The database the admin's changeform transaction is on.
        conn = psycopg_connection(router.db_for_write(Queue, instance=obj))
        limits = {"concurrency", "rate", "per_seconds"}
        if not change or limits & set(form.changed_data):
            per = data.get("per_seconds")
            set_queue_limits(
                conn,
                obj.queue,
                concurrency=data.get("concurrency"),
                rate=data.get("rate"),
                per=KEEP if per is None else per,
                by=by,
            )
        if "paused" in form.changed_data or (not change and data.get("paused")):
            if data.get("paused"):
                reason = data.get("pause_reason") or "paused in the Django admin"
                pause_queue(conn, obj.queue, by=by, reason=reason)
            else:
                resume_queue(conn, obj.queue, by=by)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing: a queue has no related rows."""

    @admin.action(description="Pause selected queues", permissions=["operate"])
    def pause_queues(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        """``runledger.pause_queue`` each queue, ``by`` the user."""
        by = request.user.get_username()
        pause = _paused_queue(by)
        self._each(request, queryset, pause, "queues paused", "queues were already paused")

    @admin.action(description="Resume selected queues", permissions=["operate"])
    def resume_queues(self, request: HttpRequest, queryset: QuerySet[Queue]) -> None:
        """``runledger.resume_queue`` each queue, ``by`` the user."""
        by = request.user.get_username()
        resume = _resumed_queue(by)
        self._each(request, queryset, resume, "queues resumed", "queues were not paused")
