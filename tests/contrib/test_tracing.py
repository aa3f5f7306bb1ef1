"""OpenTelemetry: the trace context stored at enqueue and the span each handler runs in.

A request span (created by the test: Flask has no OpenTelemetry instrumentation here) enqueues
a job; a Runtime runs it; the job's span, recorded by the SDK's in-memory exporter, belongs to
the same trace with the request span as its parent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import runledger
from runledger.contrib import flask as rl
from runledger.contrib.flask import Runledger

pytestmark = pytest.mark.db

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    """The process's SDK tracer provider (the global one can be set only once per process),
    exporting to an in-memory exporter."""
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return current


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def stored_context(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> Any:
    row = conn.execute("select trace_context from runledger.jobs where id = %s", (job_id,))
    return row.fetchone()[0]  # type: ignore[index]


def job_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("runledger.job ")]


def run_until_done(dsn: str, registry: runledger.Registry, job_ids: list[uuid.UUID]) -> None:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        runledger.Runtime(
            dsn,
            registry,
            queues=["default", "traced"],
            concurrency=2,
            poll_interval=0.05,
            listen=False,
        ),
    ):
        wait_until(
            lambda: all(runledger.get_job(conn, i).status.is_terminal for i in job_ids),
            30,
            "the jobs to finish",
        )


def test_a_flask_request_and_the_job_it_enqueued_share_one_trace(
    dsn: str, spans: InMemorySpanExporter
) -> None:
    registry = runledger.Registry()

    @registry.handler("trace.welcome", queue="traced")
    def welcome(ctx: runledger.JobContext, payload: dict[str, Any]) -> str:
        # the handler runs inside the job's span
        return format(trace.get_current_span().get_span_context().trace_id, "032x")

    app = Flask("traced_app")
    app.config.update({"TESTING": True, "SQLALCHEMY_DATABASE_URI": rl.sqlalchemy_url(dsn)})
    db = SQLAlchemy()
    db.init_app(app)
    Runledger(app, registry=registry)
    tracer = trace.get_tracer("tests")

    @app.post("/signup")
    def signup() -> dict[str, str]:
        with tracer.start_as_current_span("POST /signup", kind=SpanKind.SERVER):
            job_id = rl.enqueue(db.session, "trace.welcome", {"email": "ada@example.com"})
            db.session.commit()
        return {"job_id": str(job_id)}

    try:
        response = app.test_client().post("/signup")
        assert response.status_code == 200
        job_id = uuid.UUID(response.get_json()["job_id"])
        run_until_done(dsn, registry, [job_id])
    finally:
        with app.app_context():
            db.engine.dispose()

    [request_span] = [s for s in spans.get_finished_spans() if s.name == "POST /signup"]
    [job_span] = job_spans(spans)
    assert job_span.name == "runledger.job trace.welcome"
    assert job_span.kind is SpanKind.CONSUMER
    assert job_span.context.trace_id == request_span.context.trace_id
    assert job_span.parent is not None
    assert job_span.parent.span_id == request_span.context.span_id
    assert job_span.status.status_code is StatusCode.OK
    assert job_span.attributes is not None
    assert job_span.attributes["runledger.job.id"] == str(job_id)
    assert job_span.attributes["runledger.job.type"] == "trace.welcome"
    assert job_span.attributes["runledger.job.queue"] == "traced"
    assert job_span.attributes["runledger.job.attempt"] == 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert runledger.get_job(conn, job_id).output == format(
            request_span.context.trace_id, "032x"
        )


def test_a_failing_handler_ends_its_span_with_an_error_and_the_exception(
    dsn: str, conn: psycopg.Connection[Any], spans: InMemorySpanExporter
) -> None:
    registry = runledger.Registry()

    @registry.handler("trace.boom", max_attempts=1)
    def boom(ctx: runledger.JobContext, payload: Any) -> None:
        raise ValueError("no such customer")

    with trace.get_tracer("tests").start_as_current_span("enqueuer"):
        job_id = runledger.enqueue(conn, "trace.boom")
    conn.commit()
    run_until_done(dsn, registry, [job_id])

    [span] = job_spans(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert "no such customer" in (span.status.description or "")
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.type"] == "ValueError"


def test_no_span_is_active_so_nothing_is_stored_and_no_span_is_made(
    dsn: str, conn: psycopg.Connection[Any], spans: InMemorySpanExporter
) -> None:
    registry = runledger.Registry()
    registry.handler("trace.plain")(lambda ctx, payload: None)

    job_id = runledger.enqueue(conn, "trace.plain")
    conn.commit()
    assert stored_context(conn, job_id) is None
    run_until_done(dsn, registry, [job_id])

    assert job_spans(spans) == []


def test_enqueue_many_stores_the_context_on_both_the_insert_and_the_copy_paths(
    conn: psycopg.Connection[Any], provider: TracerProvider
) -> None:
    with trace.get_tracer("tests").start_as_current_span("batch") as span:
        few = runledger.enqueue_many(conn, [runledger.Job("trace.plain") for _ in range(3)])
        many = runledger.enqueue_many(conn, [runledger.Job("trace.plain") for _ in range(60)])
    trace_id = format(span.get_span_context().trace_id, "032x")

    for job_id in [*few, *many]:
        carrier = stored_context(conn, job_id)
        assert carrier["traceparent"].split("-")[1] == trace_id


def test_every_step_of_a_workflow_continues_the_trace_of_enqueue_workflow(
    dsn: str, conn: psycopg.Connection[Any], spans: InMemorySpanExporter
) -> None:
    registry = runledger.Registry()
    registry.handler("trace.step")(lambda ctx, payload: 1)
    builder = runledger.WorkflowBuilder("traced")
    builder.step("first", job="trace.step").step("second", job="trace.step", after="first")
    with trace.get_tracer("tests").start_as_current_span("start-run") as parent:
        run_id = runledger.enqueue_workflow(conn, builder.build())
    conn.commit()
    with psycopg.connect(dsn, autocommit=True) as observer:
        runtime = runledger.Runtime(dsn, registry, concurrency=1, poll_interval=0.05, listen=False)
        with runtime:
            wait_until(
                lambda: runledger.get_workflow_run(observer, run_id).status.is_terminal,
                30,
                "the run to finish",
            )

    found = job_spans(spans)
    assert sorted(
        s.attributes["runledger.workflow.step_key"]  # type: ignore[index]
        for s in found
    ) == ["first", "second"]
    for span in found:
        assert span.context.trace_id == parent.get_span_context().trace_id
        assert span.attributes is not None
        assert span.attributes["runledger.workflow.run_id"] == str(run_id)


def test_enqueue_works_and_stores_nothing_when_opentelemetry_is_not_importable(
    dsn: str,
) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["opentelemetry"] = None  # import opentelemetry now raises ImportError
        import psycopg, runledger
        with psycopg.connect({dsn!r}) as conn:
            job_id = runledger.enqueue(conn, "trace.plain")
            many = runledger.enqueue_many(conn, [runledger.Job("trace.plain")] * 60)
        print(json.dumps([str(job_id), *map(str, many)]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    ids = json.loads(done.stdout)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select count(*), count(trace_context) from runledger.jobs where id = any(%s)",
            ([uuid.UUID(i) for i in ids],),
        ).fetchone()
    assert row == (61, 0)
