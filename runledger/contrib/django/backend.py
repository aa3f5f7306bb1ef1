"""``RunledgerBackend``: Django's Tasks framework (``django.tasks``, or the ``django_tasks``
backport on Django 5.2) on runledger.

::

    TASKS = {"default": {"BACKEND": "runledger.contrib.django.RunledgerBackend"}}

``@task`` functions' ``.enqueue()`` writes a runledger job of type ``django.task`` on
Django's connection, in the open ``transaction.atomic()`` block if there is one (no
``on_commit`` needed). The job's payload names the task by module path and carries its
JSON arguments; ``queue_name``, ``priority`` (-100..100, higher first) and ``run_after``
become the job's queue, priority and ``run_at``. ``manage.py runledger_worker`` runs these
jobs with the ``django.task`` handler of the project registry: it imports the task, calls
it, and stores its JSON return value as the job's output; run the worker on every queue your
tasks use (``--queues default,emails``). A task that raises is retried with runledger's
backoff until ``max_attempts`` (runledger's default unless OPTIONS set one); a return value
that is not JSON fails the task at once.

``get_result(id)`` reads the job and its attempts: queued is ``READY`` (also between
retries), running ``RUNNING``, succeeded ``SUCCESSFUL`` (with the return value), failed or
cancelled ``FAILED``; every failed attempt is a ``TaskError`` and every attempt's worker a
worker id.

OPTIONS (all optional): ``database`` (the alias to enqueue on and read from, default
``"default"``), ``max_attempts`` and ``timeout_seconds`` (for every task of this backend).
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import traceback
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

import attrs
from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone
from django.utils.module_loading import import_string

from runledger.core import job as jobopts
from runledger.core.payload import JsonValue
from runledger.core.retry import Fail
from runledger.core.status import AttemptOutcome, JobStatus
from runledger.postgres.enqueue import enqueue as store_enqueue
from runledger.runtime.context import JobContext

from ._tasks import (
    BaseTaskBackend,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from .connection import psycopg_connection
from .jobs import TASK_JOB_TYPE

T = TypeVar("T")
P = ParamSpec("P")

_OPTIONS = frozenset({"database", "max_attempts", "timeout_seconds"})

_STATUS = {
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.FAILED: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}


@attrs.frozen(kw_only=True)
class TaskCall:
    """What a ``django.task`` job's payload says: which task, with which arguments."""

    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    backend: str
    run_after: datetime.datetime | None = None

    def to_payload(self) -> JsonValue:
        """The job payload."""
        return {
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "backend": self.backend,
            "run_after": None if self.run_after is None else self.run_after.isoformat(),
        }

    @classmethod
    def from_payload(cls, payload: Any) -> TaskCall:
        """Read a payload written by ``to_payload``.

        Raises:
            ValueError: it is not one.
        """
        if not isinstance(payload, Mapping):
            raise ValueError(f"a django.task payload is an object, got {type(payload).__name__}")
        path, args, kwargs = payload.get("task"), payload.get("args"), payload.get("kwargs")
        backend, run_after = payload.get("backend"), payload.get("run_after")
        if not isinstance(path, str) or not isinstance(backend, str):
            raise ValueError("a django.task payload names its task and backend")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("a django.task payload has a list of args and an object of kwargs")
        if run_after is not None and not isinstance(run_after, str):
            raise ValueError("a django.task payload's run_after is an ISO 8601 string")
        return cls(
            task=path,
            args=args,
            kwargs=kwargs,
            backend=backend,
            run_after=None if run_after is None else datetime.datetime.fromisoformat(run_after),
        )


def _import_task(path: str) -> Task[Any, Any]:
    """The ``Task`` at ``path``.

    Raises:
        ImportError: nothing can be imported there.
        TypeError: what is there is not a task.
    """
    found = import_string(path)
    if not isinstance(found, Task):
        raise TypeError(f"{path!r} is not a Task (got {type(found).__qualname__})")
    return found


def exception_path(error_type: str, tb: str | None) -> str:
    """The import path of the exception class an attempt recorded as ``error_type``.

    runledger records the class's ``__qualname__``; the last line of the traceback, as
    ``traceback.format_exception`` writes it, names the class with its module (except for
    builtins and ``__main__``), so the module is taken from there.
    """
    for line in reversed((tb or "").splitlines()):
        head = line.split(":", 1)[0].strip()
        if head.endswith("." + error_type) and " " not in head:
            return head
        if head == error_type:
            break
    if "." not in error_type and isinstance(getattr(builtins, error_type, None), type):
        return f"builtins.{error_type}"
    return error_type


class RunledgerBackend(BaseTaskBackend):
    """A ``django.tasks`` backend that stores tasks as runledger jobs; see the module docstring.

    Thread-safe (Django keeps one backend instance per thread, and each thread its own
    database connection).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = dict(self.options)
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {unknown}; "
                f"RunledgerBackend takes {sorted(_OPTIONS)}"
            )
        self.database: str = options.get("database", DEFAULT_DB_ALIAS)
        self.max_attempts: int | None = options.get("max_attempts")
        self.timeout_seconds: int | None = options.get("timeout_seconds")
        try:
            jobopts.check_max_attempts(self.max_attempts)
            jobopts.check_timeout(self.timeout_seconds)
        except ValueError as err:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: {err}") from err

    def enqueue(self, task: Task[P, T], args: Any, kwargs: Any) -> TaskResult[T]:
        """Write the task's job in Django's current transaction; return a ``READY`` result.

        Blocks for one round trip. Raises what ``runledger.enqueue`` raises, and
        ``InvalidTask``/``InvalidTaskError`` for a task this backend cannot run.
        """
        self.validate_task(task)
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):
            run_after = timezone.make_aware(run_after)  # USE_TZ = False: local time
        call = TaskCall(
            task=task.module_path,
            args=normalize_json(args),
            kwargs=normalize_json(kwargs),
            backend=self.alias,
            run_after=run_after,
        )
        job_id = store_enqueue(
            psycopg_connection(self.database),
            TASK_JOB_TYPE,
            call.to_payload(),
            queue=task.queue_name,
            priority=task.priority,
            run_at=run_after,
            max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds,
        )
        result: TaskResult[T] = TaskResult(
            task=task,
            id=str(job_id),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=call.args,
            kwargs=call.kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task's result as the ledger has it now (reads on Django's connection, so a
        task enqueued in the open transaction is visible).

        Raises:
            TaskResultDoesNotExist: no ``django.task`` job has this id, or its task can no
                longer be imported.
        """
        from .models import Job, JobAttempt

        try:
            job_id = uuid.UUID(str(result_id))
        except ValueError:
            raise TaskResultDoesNotExist(result_id) from None
        job = Job.objects.using(self.database).filter(id=job_id, job_type=TASK_JOB_TYPE).first()
        if job is None:
            raise TaskResultDoesNotExist(result_id)
        attempts = list(
            JobAttempt.objects.using(self.database)
            .filter(job_id=job_id)
            .exclude(outcome=AttemptOutcome.RELEASED)
            .order_by("attempt", "id")
        )
        try:
            call = TaskCall.from_payload(job.payload)
            task = _import_task(call.task)
        except (ValueError, ImportError, TypeError) as err:
            raise TaskResultDoesNotExist(f"{result_id}: {err}") from err
        task = task.using(
            priority=job.priority,
            queue_name=job.queue,
            run_after=call.run_after,
            backend=self.alias,
        )
        status = _STATUS[JobStatus(job.status)]
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=str(job.id),
            status=status,
            enqueued_at=job.created_at,
            started_at=attempts[0].started_at if attempts else None,
            last_attempted_at=attempts[-1].started_at if attempts else None,
            finished_at=job.finished_at,
            args=call.args,
            kwargs=call.kwargs,
            backend=self.alias,
            errors=[
                TaskError(
                    exception_class_path=exception_path(a.error_type, a.error_traceback),
                    traceback=a.error_traceback or "",
                )
                for a in attempts
                if a.error_type
            ],
            worker_ids=[a.worker for a in attempts],
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", job.output)
        return result

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """System checks: the app is installed and the database is PostgreSQL."""
        yield from super().check(**kwargs)
        if not apps.is_installed("runledger.contrib.django"):
            yield checks.Error(
                f"TASKS[{self.alias!r}] uses RunledgerBackend, which needs the runledger app",
                hint="Add 'runledger.contrib.django' to INSTALLED_APPS.",
                id="runledger.E001",
            )
        if self.database not in connections:
            yield checks.Error(
                f"TASKS[{self.alias!r}]['OPTIONS']['database'] is {self.database!r}, "
                "which is not in DATABASES",
                id="runledger.E002",
            )
        elif connections[self.database].vendor != "postgresql":
            yield checks.Error(
                f"TASKS[{self.alias!r}] needs a PostgreSQL database; {self.database!r} is "
                f"{connections[self.database].vendor}",
                id="runledger.E003",
            )


def _finished(started: TaskResult[Any], status: Any) -> TaskResult[Any]:
    """``started`` as it ends: ``status``, finished now (its own copy of the errors)."""
    return dataclasses.replace(
        started, status=status, finished_at=timezone.now(), errors=list(started.errors)
    )


def run_task(ctx: JobContext, payload: JsonValue) -> JsonValue:
    """Run the task a ``django.task`` job names (the ``django.task`` handler).

    Sends ``task_started`` before the call and ``task_finished`` when the task is done for
    good (success, or the failure of its last attempt). Returns the task's value as JSON.

    Raises:
        Fail: the payload, the task or its return value cannot be used (not retried).
        Exception: whatever the task raised (retried while attempts remain).
    """
    try:
        call = TaskCall.from_payload(payload)
        task = _import_task(call.task)
    except (ValueError, ImportError, TypeError) as err:
        raise Fail(f"cannot run this django.task job: {err}") from err
    backend = task_backends[call.backend]
    if not isinstance(backend, RunledgerBackend):
        raise Fail(
            f"TASKS[{call.backend!r}] is {type(backend).__qualname__} in this process, "
            "not RunledgerBackend"
        )
    started = backend.get_result(str(ctx.job_id))
    task_started.send(type(backend), task_result=started)
    last = ctx.attempt >= ctx.max_attempts
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=started), *call.args, **call.kwargs)
        else:
            value = task.call(*call.args, **call.kwargs)
        try:
            output: JsonValue = normalize_json(value)
        except (TypeError, ValueError) as err:
            raise Fail(f"{call.task} returned a value that is not JSON: {err}") from err
    except Exception as err:
        if last or isinstance(err, Fail):
            failed = _finished(started, TaskResultStatus.FAILED)
            failed.errors.append(
                TaskError(
                    exception_class_path=f"{type(err).__module__}.{type(err).__qualname__}",
                    traceback="".join(traceback.format_exception(err)),
                )
            )
            task_finished.send(type(backend), task_result=failed)
        raise
    done = _finished(started, TaskResultStatus.SUCCESSFUL)
    object.__setattr__(done, "_return_value", output)
    task_finished.send(type(backend), task_result=done)
    return output
