"""What enqueue needs to know about registered handlers, without depending on the runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs


@attrs.frozen(kw_only=True)
class HandlerDefaults:
    """A handler's defaults for the jobs of its type; None leaves the global default."""

    job_type: str
    queue: str | None = None
    max_attempts: int | None = None
    timeout_seconds: int | None = None
    concurrency_key: str | Callable[[Any], str] | None = None
    """A key for every job of the type, or a function of the job's payload returning one."""
    concurrency_limit: int | None = None


class HandlerCatalog(Protocol):
    """Anything that knows which job types have handlers (``runledger.Registry`` does)."""

    def handler_defaults(self, job_type: str) -> HandlerDefaults | None:
        """The defaults of the handler for ``job_type``, or None if there is none."""
        ...

    def job_types(self) -> tuple[str, ...]:
        """Every registered job type, sorted."""
        ...
