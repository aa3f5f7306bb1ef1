"""Lifecycle hooks: plain callables the runtime calls after a transition has committed."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable

import attrs

from runledger.core.status import EventKind

_logger = logging.getLogger("runledger.hooks")


@attrs.frozen(kw_only=True)
class LifecycleEvent:
    """A committed transition, as passed to hooks.

    Attributes:
        kind: what happened (``job.succeeded``, ``step.failed``, ``run.succeeded``, ...).
        job_id, job_type, attempt: the job, for job events; step events carry ``job_id``
            only for a released job step (``step.queued``).
        workflow_run_id, step_key: the workflow, for workflow jobs, steps and runs.
        error: the error text for failures and retries.
        retry_at: when a retried or snoozed job runs next.
        output: what a successful job returned.
        queue, max_attempts: the job's queue and attempts allowed, when the runtime that
            ran it knows them.
        duration: seconds the handler ran, for outcomes of a handler run by this runtime.
        traceback: the failure's traceback, for failures and retries.
        queue_wait: seconds from when the job was due (``run_at``) to its claim, for
            ``job.started``.
    """

    kind: EventKind
    job_id: uuid.UUID | None = None
    job_type: str | None = None
    attempt: int | None = None
    workflow_run_id: uuid.UUID | None = None
    step_key: str | None = None
    error: str | None = None
    retry_at: datetime.datetime | None = None
    output: object = None
    queue: str | None = None
    max_attempts: int | None = None
    duration: float | None = None
    traceback: str | None = None
    queue_wait: float | None = None


Hook = Callable[[LifecycleEvent], object]


class Hooks:
    """Hooks by event kind; a subscriber of the runtime's ``EventStream`` (called with each
    batch, it calls the hooks of each event's kind). Registration is not thread-safe (do it
    at import time); a hook added while a runtime runs is called from the next event of its
    kind on."""

    def __init__(self) -> None:
        self._hooks: dict[EventKind, list[Hook]] = defaultdict(list)

    def add(self, kinds: tuple[EventKind, ...], hook: Hook) -> Hook:
        """Call ``hook`` for events of these kinds; returns it (usable as a decorator)."""
        for kind in kinds:
            self._hooks[kind].append(hook)
        return hook

    def __call__(self, events: list[LifecycleEvent]) -> None:
        """``emit``: the hooks as a subscriber of the ``EventStream``."""
        self.emit(events)

    def emit(self, events: list[LifecycleEvent]) -> None:
        """Call the hooks of each event in order; log and swallow what they raise."""
        for event in events:
            for hook in self._hooks.get(event.kind, ()):
                try:
                    hook(event)
                except Exception:
                    _logger.exception("hook %r failed on %s; ignored", hook, event.kind)

    def wants(self, kind: EventKind) -> bool:
        """True if some hook listens to ``kind``."""
        return bool(self._hooks.get(kind))
