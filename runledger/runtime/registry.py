"""The ``Registry``: which function handles which job type, with the handler's defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from runledger.core import job as jobopts
from runledger.core.handler import HandlerDefaults
from runledger.errors import DuplicateHandler

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen(kw_only=True)
class Handler:
    """A registered handler: the function and the defaults for jobs of its type."""

    fn: Callable[..., Any]
    defaults: HandlerDefaults


class Registry:
    """Maps job types to handler functions.

    Register with the decorator; pass the registry to ``enqueue(..., registry=)`` to refuse
    unknown job types before writing and to apply the handler's defaults::

        registry = Registry()

        @registry.handler("email.send", queue="mail", max_attempts=5, timeout_seconds=30)
        def send(ctx, payload): ...

    Registration is not thread-safe; do it at import time. Lookups are.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def handler(
        self,
        job_type: str,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as the handler of ``job_type``.

        Raises:
            JobOptionError: an invalid default (blank type or queue, non-positive numbers).
            DuplicateHandler: ``job_type`` already has a handler here.
        """
        jobopts.check_job_type(job_type)
        if queue is not None:
            jobopts.check_queue(queue)
        jobopts.check_max_attempts(max_attempts)
        jobopts.check_timeout(timeout_seconds)
        if job_type in self._handlers:
            raise DuplicateHandler(job_type=job_type)
        defaults = HandlerDefaults(
            job_type=job_type,
            queue=queue,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
        )

        def register(fn: F) -> F:
            if job_type in self._handlers:
                raise DuplicateHandler(job_type=job_type)
            self._handlers[job_type] = Handler(fn=fn, defaults=defaults)
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
