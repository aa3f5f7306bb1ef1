"""Which events the ``EventStream`` is asked for, without a database: each subscriber states
the kinds it wants (hooks by what is registered, the job log by its logger's level, metrics by
what they count), and the runtime builds only events that some subscriber wants."""

from __future__ import annotations

import datetime
import logging
import uuid

import pytest

from runledger.core.status import EventKind, JobStatus, RunStatus, StepStatus
from runledger.postgres.attempts import Finished, FinishReport
from runledger.postgres.workflow import Advance, RunChange, StepChange
from runledger.runtime.events import EventStream, report_events
from runledger.runtime.hooks import Hooks, LifecycleEvent
from runledger.runtime.logs import JobLog

RUN = uuid.uuid4()


class Wanting:
    """A subscriber that wants only ``kinds`` and keeps every batch it is given."""

    def __init__(self, *kinds: EventKind) -> None:
        self.kinds = set(kinds)
        self.batches: list[list[LifecycleEvent]] = []

    def __call__(self, events: list[LifecycleEvent]) -> None:
        self.batches.append(events)

    def wants(self, kind: EventKind) -> bool:
        return kind in self.kinds


def _finished(status: JobStatus) -> Finished:
    return Finished(
        job_id=uuid.uuid4(),
        lease_token=uuid.uuid4(),
        status=status,
        attempt=1,
        job_type="t",
        workflow_run_id=None,
        step_key=None,
        run_at=datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC),
    )


def _report(*statuses: JobStatus, workflow: Advance | None = None) -> FinishReport:
    return FinishReport(
        finished=tuple(_finished(s) for s in statuses), lost=(), workflow=workflow or Advance()
    )


def test_a_stream_wants_what_one_of_its_subscribers_wants() -> None:
    stream = EventStream([Wanting(EventKind.JOB_FAILED)])
    assert not stream.wants(EventKind.JOB_STARTED)
    assert stream.wants(EventKind.JOB_FAILED)

    stream.subscribe(Wanting(EventKind.JOB_STARTED))
    assert stream.wants(EventKind.JOB_STARTED)
    assert not EventStream().wants(EventKind.JOB_SUCCEEDED)


def test_a_subscriber_that_states_nothing_wants_every_event() -> None:
    seen: list[list[LifecycleEvent]] = []
    stream = EventStream([seen.append])
    assert all(stream.wants(kind) for kind in EventKind)


def test_hooks_want_the_kinds_registered_even_after_the_stream_was_built() -> None:
    hooks = Hooks()
    stream = EventStream([hooks])
    assert not any(stream.wants(kind) for kind in EventKind)

    called: list[LifecycleEvent] = []
    hooks.add((EventKind.JOB_STARTED,), called.append)
    assert stream.wants(EventKind.JOB_STARTED)
    assert not stream.wants(EventKind.JOB_SUCCEEDED)

    stream.emit([LifecycleEvent(kind=EventKind.JOB_STARTED)])
    assert [e.kind for e in called] == [EventKind.JOB_STARTED]


def test_the_job_log_wants_what_its_logger_level_lets_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "tests.event_demand.jobs"
    stream = EventStream([JobLog(logging.getLogger(name))])

    caplog.set_level(logging.INFO, logger=name)
    assert not stream.wants(EventKind.JOB_STARTED)
    assert stream.wants(EventKind.JOB_SUCCEEDED)
    assert not stream.wants(EventKind.STEP_SUCCEEDED)

    caplog.set_level(logging.DEBUG, logger=name)
    assert stream.wants(EventKind.JOB_STARTED)

    caplog.set_level(logging.ERROR, logger=name)
    assert not stream.wants(EventKind.JOB_SUCCEEDED)
    assert not stream.wants(EventKind.JOB_CANCELLED)
    # A timed-out retry is an ERROR line, and only the event tells whether it timed out.
    assert stream.wants(EventKind.JOB_RETRYING)
    assert stream.wants(EventKind.JOB_FAILED)


def test_report_events_builds_only_the_kinds_wanted() -> None:
    report = _report(JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED)

    everything = report_events(report, {})
    assert [e.kind for e in everything] == [
        EventKind.JOB_SUCCEEDED,
        EventKind.JOB_FAILED,
        EventKind.JOB_RETRYING,
    ]
    failed = report_events(report, {}, wants=EventStream([Wanting(EventKind.JOB_FAILED)]).wants)
    assert [e.kind for e in failed] == [EventKind.JOB_FAILED]
    assert report_events(report, {}, wants=EventStream().wants) == []


def test_report_events_builds_only_the_workflow_events_wanted() -> None:
    workflow = Advance(
        steps=(StepChange(run_id=RUN, step_key="a", status=StepStatus.SUCCEEDED),),
        runs=(RunChange(run_id=RUN, old_status=RunStatus.RUNNING, status=RunStatus.SUCCEEDED),),
    )
    report = _report(JobStatus.SUCCEEDED, workflow=workflow)

    assert [e.kind for e in report_events(report, {})] == [
        EventKind.JOB_SUCCEEDED,
        EventKind.STEP_SUCCEEDED,
        EventKind.RUN_SUCCEEDED,
    ]
    runs = EventStream([Wanting(EventKind.RUN_SUCCEEDED)]).wants
    assert [e.kind for e in report_events(report, {}, wants=runs)] == [EventKind.RUN_SUCCEEDED]
