"""The W3C trace context of the active OpenTelemetry span, as enqueue stores it on a job.

OpenTelemetry is optional (the ``otel`` extra): without it, or with no span active, there is
nothing to store and the cost is one cached lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable


@functools.cache
def _injector() -> Callable[[], dict[str, str] | None] | None:
    """Reads the current context with OpenTelemetry's global propagator; None if it is absent."""
    try:
        from opentelemetry import propagate, trace  # optional: imported once, lazily
    except ImportError:
        return None

    def inject() -> dict[str, str] | None:
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    return inject


def current_trace_context() -> dict[str, str] | None:
    """The carrier (``traceparent``, and ``tracestate`` or baggage when set) of the span active
    in this thread, or None when no span is active or OpenTelemetry is not installed.

    Pure context handling, no I/O; thread-safe.
    """
    inject = _injector()
    return None if inject is None else inject()
