"""The ``Registry``: handlers by job type with their defaults, cron schedules and hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from runledger.core import job as jobopts
from runledger.core.handler import HandlerDefaults
from runledger.core.limits import check_concurrency
from runledger.core.payload import JsonValue
from runledger.core.retry import DEFAULT_RETRY_POLICY, RetryPolicy
from runledger.core.schedule import ScheduleSpec
from runledger.core.status import EventKind
from runledger.errors import DuplicateHandler
from runledger.runtime.hooks import Hook, Hooks

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen(kw_only=True)
class Handler:
    """A registered handler: the function, the defaults for jobs of its type, its retries."""

    fn: Callable[..., Any]
    defaults: HandlerDefaults
    retry: RetryPolicy = DEFAULT_RETRY_POLICY


class Registry:
    """Maps job types to handler functions; holds cron schedules and lifecycle hooks.

    Register with the decorators; pass the registry to ``Runtime`` to run the jobs, and to
    ``enqueue(..., registry=)`` to refuse unknown job types before writing::

        registry = Registry()

        @registry.handler("email.send", queue="mail", max_attempts=5, timeout_seconds=30)
        def send(ctx, payload): ...

        registry.schedule("nightly", cron="0 3 * * *", job_type="report.build")

        @registry.on_job_failed
        def alert(event): ...

    Registration is not thread-safe; do it at import time. Lookups are.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._schedules: dict[str, ScheduleSpec] = {}
        self.hooks = Hooks()

    def handler(
        self,
        job_type: str,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
        retry: RetryPolicy | None = None,
        concurrency_key: str | Callable[[Any], str] | None = None,
        concurrency_limit: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated ``fn(ctx, payload)`` as the handler of ``job_type``.

        ``queue``, ``max_attempts`` and ``timeout_seconds`` apply to jobs that do not set
        them; ``retry`` shapes the backoff between failed attempts. ``concurrency_key`` (a
        str, or a function of the payload returning one, called at enqueue) and
        ``concurrency_limit`` (default 1) apply to jobs enqueued with ``registry=`` that set
        no key of their own; a job's own key with no limit takes this limit.

        Raises:
            JobOptionError: an invalid default (blank type or queue, non-positive numbers).
            DuplicateHandler: ``job_type`` already has a handler here.
        """
        jobopts.check_job_type(job_type)
        if queue is not None:
            jobopts.check_queue(queue)
        jobopts.check_max_attempts(max_attempts)
        jobopts.check_timeout(timeout_seconds)
        check_concurrency(
            "callable" if callable(concurrency_key) else concurrency_key, concurrency_limit
        )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__qualname__}")
        if job_type in self._handlers:
            raise DuplicateHandler(job_type=job_type)
        defaults = HandlerDefaults(
            job_type=job_type,
            queue=queue,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )

        def register(fn: F) -> F:
            if job_type in self._handlers:
                raise DuplicateHandler(job_type=job_type)
            self._handlers[job_type] = Handler(
                fn=fn, defaults=defaults, retry=retry or DEFAULT_RETRY_POLICY
            )
            return fn

        return register

    def get(self, job_type: str) -> Handler | None:
        """The handler of ``job_type``, or None."""
        return self._handlers.get(job_type)

    def handler_defaults(self, job_type: str) -> HandlerDefaults | None:
        """The defaults of the handler of ``job_type``, or None if there is none."""
        found = self._handlers.get(job_type)
        return None if found is None else found.defaults

    def job_types(self) -> tuple[str, ...]:
        """Every registered job type, sorted."""
        return tuple(sorted(self._handlers))

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    # --- schedules ------------------------------------------------------------------------

    def schedule(
        self,
        name: str,
        *,
        cron: str,
        job_type: str,
        payload: JsonValue = None,
        timezone: str = "UTC",
        queue: str | None = None,
        priority: int = jobopts.DEFAULT_PRIORITY,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
    ) -> ScheduleSpec:
        """Declare a cron schedule; runtimes write it to ``runledger.schedules`` on start.

        Raises:
            InvalidCron / UnknownTimezone: the expression or timezone is invalid.
            JobOptionError: an invalid job option.
        """
        spec = ScheduleSpec(
            name=name,
            cron=cron,
            job_type=job_type,
            payload=payload,
            timezone=timezone,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
        )
        self._schedules[name] = spec
        return spec

    def schedules(self) -> tuple[ScheduleSpec, ...]:
        """The declared schedules, by name."""
        return tuple(self._schedules[name] for name in sorted(self._schedules))

    # --- hooks ------------------------------------------------------------------------------

    def on(self, *kinds: EventKind | str) -> Callable[[Hook], Hook]:
        """Decorator: call the function with a ``LifecycleEvent`` for events of these kinds."""
        parsed = tuple(EventKind(kind) for kind in kinds)
        return lambda hook: self.hooks.add(parsed, hook)

    def on_job_started(self, hook: Hook) -> Hook:
        """Call ``hook`` when this runtime starts an attempt (after the claim commits)."""
        return self.hooks.add((EventKind.JOB_STARTED,), hook)

    def on_job_succeeded(self, hook: Hook) -> Hook:
        """Call ``hook`` after a job's success commits."""
        return self.hooks.add((EventKind.JOB_SUCCEEDED,), hook)

    def on_job_retrying(self, hook: Hook) -> Hook:
        """Call ``hook`` after a failed attempt is scheduled for a retry."""
        return self.hooks.add((EventKind.JOB_RETRYING,), hook)

    def on_job_failed(self, hook: Hook) -> Hook:
        """Call ``hook`` after a job fails for good (dead-lettered)."""
        return self.hooks.add((EventKind.JOB_FAILED,), hook)

    def on_job_cancelled(self, hook: Hook) -> Hook:
        """Call ``hook`` when this runtime finds one of its running jobs cancelled."""
        return self.hooks.add((EventKind.JOB_CANCELLED,), hook)

    def on_step_succeeded(self, hook: Hook) -> Hook:
        """Call ``hook`` after a workflow step succeeds."""
        return self.hooks.add((EventKind.STEP_SUCCEEDED,), hook)

    def on_step_failed(self, hook: Hook) -> Hook:
        """Call ``hook`` after a workflow step fails."""
        return self.hooks.add((EventKind.STEP_FAILED,), hook)

    def on_step_cancelled(self, hook: Hook) -> Hook:
        """Call ``hook`` after a workflow step is cancelled (cascades included)."""
        return self.hooks.add((EventKind.STEP_CANCELLED,), hook)

    def on_run_finished(self, hook: Hook) -> Hook:
        """Call ``hook`` after a workflow run reaches a final status in a transaction this
        runtime commits (a job completion or a reap). Transitions committed by application
        code (``complete_external_step``, ``cancel_workflow``) are in ``runledger.events``
        but call no hook: hooks run in the runtime process."""
        return self.hooks.add(
            (EventKind.RUN_SUCCEEDED, EventKind.RUN_COMPLETED_WITH_ERRORS, EventKind.RUN_CANCELLED),
            hook,
        )
