"""``JobLog`` without a database: the level of each outcome's line, and no line for a level
that is off."""

from __future__ import annotations

import datetime
import logging
import uuid
from typing import Any

import pytest

from runledger.core.status import EventKind
from runledger.runtime.hooks import LifecycleEvent
from runledger.runtime.logs import JobLog

JOB = uuid.uuid4()


def _event(kind: EventKind, **fields: Any) -> LifecycleEvent:
    return LifecycleEvent(
        kind=kind, job_id=JOB, job_type="t", attempt=1, max_attempts=3, queue="q", **fields
    )


def test_a_timed_out_attempt_that_will_retry_is_an_error_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runledger.jobs")
    at = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)

    JobLog()(
        [
            _event(
                EventKind.JOB_RETRYING, error="TimedOut: past 5 s", traceback="TB here", retry_at=at
            )
        ]
    )

    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"t[{JOB}] timed out (attempt 1/3), will retry at 2026-12-04T00:00:00+00:00: "
        "TimedOut: past 5 s\nTB here"
    )


def test_a_cancellation_is_a_warning_and_a_start_is_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runledger.jobs")

    JobLog()([_event(EventKind.JOB_STARTED), _event(EventKind.JOB_CANCELLED)])

    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, f"t[{JOB}] started (attempt 1/3)"),
        (logging.WARNING, f"t[{JOB}] cancelled (attempt 1/3)"),
    ]


def test_at_warning_a_success_logs_nothing_and_a_dead_letter_still_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="runledger.jobs")

    JobLog()(
        [_event(EventKind.JOB_SUCCEEDED, duration=0.5), _event(EventKind.JOB_FAILED, error="E: x")]
    )

    assert [r.levelno for r in caplog.records] == [logging.ERROR]
