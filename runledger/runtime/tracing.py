"""The OpenTelemetry span each handler runs in, continuing the trace stored at enqueue.

OpenTelemetry is optional (the ``otel`` extra). A job enqueued with no span active carries no
trace context and runs with no span; without OpenTelemetry installed nothing here imports it.
The tracer comes from the global tracer provider, which the application configures.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

from runledger.core.status import AttemptOutcome, JobStatus
from runledger.postgres.attempts import AttemptResult, ClaimedJob

TRACER_NAME = "runledger"


class JobSpan(Protocol):
    """What the executor tells the span of an attempt."""

    def outcome(self, result: AttemptResult, error: BaseException | None) -> None:
        """Record how the attempt ended: OK, or ERROR with the exception when it failed."""


class _NoSpan:
    def outcome(self, result: AttemptResult, error: BaseException | None) -> None:
        pass


_NO_SPAN = _NoSpan()


@functools.cache
def _otel() -> Any:
    """The OpenTelemetry modules, imported once; None when they are not installed."""
    try:
        from opentelemetry import propagate, trace  # optional: imported once, lazily
    except ImportError:
        return None
    return (propagate, trace)


class _Span:
    def __init__(self, span: Any, trace: Any) -> None:
        self._span = span
        self._trace = trace

    def outcome(self, result: AttemptResult, error: BaseException | None) -> None:
        span, status = self._span, self._trace.Status
        span.set_attribute("runledger.job.outcome", str(result.outcome))
        if result.status is JobStatus.SUCCEEDED:
            span.set_status(status(self._trace.StatusCode.OK))
            return
        if result.outcome is AttemptOutcome.SNOOZED:
            return  # not an error, nor done: the status stays unset
        if error is not None:
            span.record_exception(error)
        description = f"{result.error_type}: {result.error_message}"
        span.set_status(status(self._trace.StatusCode.ERROR, description))


def job_span(job: ClaimedJob) -> AbstractContextManager[JobSpan]:
    """A span named ``runledger.job <job_type>`` (kind CONSUMER), current while it is open and
    a child of the span that enqueued ``job``; a no-op when the job carries no trace context or
    OpenTelemetry is not installed. Thread-safe (the context is per thread)."""
    if job.trace_context is None:
        return nullcontext(_NO_SPAN)
    modules = _otel()
    if modules is None:
        return nullcontext(_NO_SPAN)
    return _job_span(job, *modules)


@contextmanager
def _job_span(job: ClaimedJob, propagate: Any, trace: Any) -> Iterator[JobSpan]:
    parent = propagate.extract(dict(job.trace_context or {}))
    attributes: dict[str, str | int] = {
        "runledger.job.id": str(job.id),
        "runledger.job.type": job.job_type,
        "runledger.job.queue": job.queue,
        "runledger.job.attempt": job.attempt,
    }
    if job.workflow_run_id is not None:
        attributes["runledger.workflow.run_id"] = str(job.workflow_run_id)
    if job.step_key is not None:
        attributes["runledger.workflow.step_key"] = job.step_key
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"runledger.job {job.job_type}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        # the executor catches the handler's exceptions and reports them through outcome()
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield _Span(span, trace)
