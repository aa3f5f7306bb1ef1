"""``RunledgerBackend`` against the Tasks framework's contract: enqueue returns a READY result
whose options are stored on the job, a worker runs it, ``get_result`` follows it to
SUCCESSFUL or FAILED with the exception recorded, and enqueue joins the atomic block."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import runledger
from runledger.contrib.django import TASK_JOB_TYPE


def framework_errors() -> tuple[type[Exception], type[Exception]]:
    """The framework's (invalid task, result mismatch) errors, whichever framework it is."""
    try:
        from django.tasks.exceptions import (
            InvalidTask,
            TaskResultMismatch,
        )
    except ImportError:
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import TaskResultMismatch
    return InvalidTask, TaskResultMismatch


def job_of(observer: psycopg.Connection[Any], result_id: str) -> runledger.JobRecord:
    return runledger.get_job(observer, uuid.UUID(result_id))


def finished(result: Any, wait_until: Callable[..., None], timeout: float = 15.0) -> Any:
    """Refresh ``result`` until it is finished."""

    def done() -> bool:
        result.refresh()
        return bool(result.is_finished)

    wait_until(done, timeout=timeout, what=f"task result {result.id} to finish")
    return result


@pytest.fixture
def signals() -> Iterator[list[tuple[str, Any]]]:
    """The Tasks framework's signals received during the test, as (name, status)."""
    from runledger.contrib.django._tasks import task_enqueued, task_finished, task_started

    received: list[tuple[str, Any]] = []
    receivers = {}
    for name, signal in (
        ("enqueued", task_enqueued),
        ("started", task_started),
        ("finished", task_finished),
    ):

        def receive(sender: Any, task_result: Any, _name: str = name, **kwargs: Any) -> None:
            received.append((_name, task_result.status))

        receivers[name] = (signal, receive)
        signal.connect(receive, weak=False)
    try:
        yield received
    finally:
        for signal, receive in receivers.values():
            signal.disconnect(receive)


def test_the_backend_is_importable_from_the_package_and_declares_its_features() -> None:
    from runledger.contrib.django import RunledgerBackend
    from runledger.contrib.django._tasks import task_backends

    backend = task_backends["default"]

    assert isinstance(backend, RunledgerBackend)
    assert backend.supports_defer
    assert backend.supports_priority
    assert backend.supports_get_result
    assert backend.supports_async_task


def test_enqueue_returns_a_ready_result_and_writes_a_job(
    observer: psycopg.Connection[Any], signals: list[tuple[str, Any]]
) -> None:
    from rltest_app.tasks import add

    from runledger.contrib.django._tasks import TaskResultStatus

    result = add.enqueue(2, b=3)

    assert result.status == TaskResultStatus.READY
    assert result.args == [2]
    assert result.kwargs == {"b": 3}
    assert result.backend == "default"
    assert result.task is add
    assert result.enqueued_at is not None
    assert result.errors == []
    assert result.worker_ids == []
    assert not result.is_finished
    job = job_of(observer, result.id)
    assert job.job_type == TASK_JOB_TYPE
    assert job.queue == "default"
    assert job.priority == 0
    assert job.status == runledger.JobStatus.QUEUED
    assert job.payload == {
        "task": "rltest_app.tasks.add",
        "args": [2],
        "kwargs": {"b": 3},
        "backend": "default",
        "run_after": None,
    }
    assert signals == [("enqueued", TaskResultStatus.READY)]


def test_priority_queue_name_and_run_after_are_stored_on_the_job(
    observer: psycopg.Connection[Any],
) -> None:
    from django.utils import timezone
    from rltest_app.tasks import send_email

    later = timezone.now() + datetime.timedelta(hours=2)

    result = send_email.using(priority=-40, run_after=later).enqueue("a@example.com")
    default = send_email.enqueue("b@example.com")

    job = job_of(observer, result.id)
    assert (job.queue, job.priority, job.run_at) == ("emails", -40, later)
    assert job_of(observer, default.id).priority == 10
    assert result.task.run_after == later
    # get_result gives back the task with the options of this enqueue.
    fetched = send_email.get_result(result.id)
    assert (fetched.task.priority, fetched.task.queue_name) == (-40, "emails")
    assert fetched.task.run_after == later


def test_the_extreme_priorities_map_one_to_one(observer: psycopg.Connection[Any]) -> None:
    from rltest_app.tasks import add

    low = add.using(priority=-100).enqueue(1, 1)
    high = add.using(priority=100).enqueue(1, 1)

    assert job_of(observer, low.id).priority == -100
    assert job_of(observer, high.id).priority == 100


def test_the_framework_refuses_what_the_backend_cannot_run() -> None:
    from rltest_app.tasks import add

    invalid, _ = framework_errors()

    with pytest.raises(invalid, match="priority"):
        add.using(priority=101)
    with pytest.raises(invalid, match="Queue"):
        add.using(queue_name="nowhere")


def test_enqueue_inside_a_rolled_back_atomic_block_leaves_no_result() -> None:
    from django.db import transaction
    from rltest_app.tasks import add

    from runledger.contrib.django._tasks import TaskResultDoesNotExist

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        result = add.enqueue(1, 2)
        # Inside the block the result is readable (same connection) ...
        assert add.get_result(result.id).id == result.id
        raise Boom

    # ... and gone with the rollback.
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result(result.id)


def test_get_result_of_unknown_or_malformed_ids_raises_does_not_exist() -> None:
    from rltest_app.tasks import add

    from runledger.contrib.django import enqueue
    from runledger.contrib.django._tasks import TaskResultDoesNotExist, task_backends

    backend = task_backends["default"]
    not_a_task = enqueue("rltest.echo", {})

    for result_id in (str(uuid.uuid4()), "not-a-uuid", str(not_a_task)):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(result_id)
        with pytest.raises(TaskResultDoesNotExist):
            add.get_result(result_id)


def test_a_worker_runs_the_task_and_get_result_shows_it_successful(
    worker: Callable[..., runledger.Runtime],
    wait_until: Callable[..., None],
    signals: list[tuple[str, Any]],
) -> None:
    from rltest_app.tasks import add, send_email

    from runledger.contrib.django._tasks import TaskResultStatus

    result = add.enqueue(2, 3)
    email = send_email.enqueue("a@example.com", subject="hi")
    runtime = worker()

    finished(result, wait_until)
    finished(email, wait_until)

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert email.return_value == "sent 'hi' to a@example.com"
    assert result.attempts == 1
    assert result.worker_ids == [runtime.worker_id]
    assert result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    fetched = add.get_result(result.id)
    assert fetched.return_value == 5
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert ("started", TaskResultStatus.RUNNING) in signals
    assert ("finished", TaskResultStatus.SUCCESSFUL) in signals


def test_a_task_enqueued_inside_a_committed_atomic_block_runs(
    worker: Callable[..., runledger.Runtime], wait_until: Callable[..., None]
) -> None:
    from django.db import transaction
    from rltest_app.tasks import add

    with transaction.atomic():
        result = add.enqueue(20, 22)
    worker()

    assert finished(result, wait_until).return_value == 42


def test_a_raising_task_is_failed_with_its_exception_recorded(
    worker: Callable[..., runledger.Runtime],
    wait_until: Callable[..., None],
    signals: list[tuple[str, Any]],
) -> None:
    from rltest_app.tasks import PaymentDeclined, decline

    from runledger.contrib.django._tasks import TaskResultStatus

    result = decline.using(backend="once").enqueue(990)
    worker()

    finished(result, wait_until)

    assert result.status == TaskResultStatus.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    [error] = result.errors
    assert error.exception_class_path == "rltest_app.tasks.PaymentDeclined"
    assert error.exception_class is PaymentDeclined
    assert "card declined for 990" in error.traceback
    assert "Traceback" in error.traceback
    assert result.attempts == 1
    assert result.finished_at is not None
    assert ("finished", TaskResultStatus.FAILED) in signals


def test_a_failing_task_is_retried_ready_in_between_then_failed(
    worker: Callable[..., runledger.Runtime],
    wait_until: Callable[..., None],
    observer: psycopg.Connection[Any],
) -> None:
    from rltest_app.tasks import decline

    from runledger.contrib.django._tasks import TaskResultStatus

    # The default backend leaves max_attempts to runledger (5): two are enough here.
    result = decline.enqueue(1)
    observer.execute(
        "update runledger.jobs set max_attempts = 2 where id = %s", [uuid.UUID(result.id)]
    )
    worker()

    def retried() -> bool:
        result.refresh()
        return len(result.errors) == 1

    wait_until(retried, what="the first attempt to fail")
    assert result.status in (TaskResultStatus.READY, TaskResultStatus.RUNNING)
    assert not result.is_finished

    finished(result, wait_until)
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 2
    assert [e.exception_class_path for e in result.errors] == [
        "rltest_app.tasks.PaymentDeclined"
    ] * 2


def test_a_builtin_exception_resolves_to_its_class(
    worker: Callable[..., runledger.Runtime], wait_until: Callable[..., None]
) -> None:
    from rltest_app.tasks import add

    result = add.using(backend="once").enqueue("a", 1)  # str + int: TypeError
    worker()

    [error] = finished(result, wait_until).errors
    assert error.exception_class_path == "builtins.TypeError"
    assert error.exception_class is TypeError


def test_a_task_returning_something_not_json_fails_without_retrying(
    worker: Callable[..., runledger.Runtime], wait_until: Callable[..., None]
) -> None:
    from rltest_app.tasks import not_json

    from runledger.contrib.django._tasks import TaskResultStatus

    result = not_json.enqueue()
    worker()

    finished(result, wait_until)
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 1
    assert "not JSON" in result.errors[0].traceback


def test_a_task_taking_context_sees_its_running_result(
    worker: Callable[..., runledger.Runtime], wait_until: Callable[..., None]
) -> None:
    from rltest_app.tasks import which_attempt

    result = which_attempt.enqueue("ctx")
    worker()

    assert finished(result, wait_until).return_value == {
        "attempt": 1,
        "id": result.id,
        "status": "RUNNING",
        "label": "ctx",
    }


def test_an_async_task_runs(
    worker: Callable[..., runledger.Runtime], wait_until: Callable[..., None]
) -> None:
    from rltest_app.tasks import double

    result = double.enqueue(21)
    worker()

    assert finished(result, wait_until).return_value == 42


def test_a_task_using_the_orm_in_a_worker_thread_runs(
    worker: Callable[..., runledger.Runtime], wait_until: Callable[..., None]
) -> None:
    from django.contrib.auth.models import User
    from rltest_app.tasks import count_users

    result = count_users.enqueue()
    worker()

    assert finished(result, wait_until).return_value == User.objects.count()


def test_a_cancelled_task_is_failed(observer: psycopg.Connection[Any]) -> None:
    from rltest_app.tasks import add

    from runledger.contrib.django._tasks import TaskResultStatus

    result = add.enqueue(1, 2)
    runledger.cancel_job(observer, uuid.UUID(result.id), reason="no longer needed")

    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.is_finished


def test_a_result_of_another_task_is_a_mismatch() -> None:
    from rltest_app.tasks import add, send_email

    result = add.enqueue(1, 2)

    _, mismatch = framework_errors()

    with pytest.raises(mismatch):
        send_email.get_result(result.id)


def test_unknown_options_are_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from runledger.contrib.django import RunledgerBackend

    with pytest.raises(ImproperlyConfigured, match="unknown keys"):
        RunledgerBackend("x", {"OPTIONS": {"max_attemps": 3}})
    with pytest.raises(ImproperlyConfigured, match="max_attempts"):
        RunledgerBackend("x", {"OPTIONS": {"max_attempts": 0}})


def test_the_backend_system_checks_pass_on_this_project() -> None:
    from runledger.contrib.django._tasks import task_backends

    assert list(task_backends["default"].check()) == []


def test_exception_path_reads_the_module_from_the_traceback() -> None:
    from runledger.contrib.django.backend import exception_path

    tb = "Traceback (most recent call last):\n  File 'x.py', line 1\npkg.mod.Oops: it broke\n"

    assert exception_path("Oops", tb) == "pkg.mod.Oops"
    assert exception_path("ValueError", "ValueError: bad") == "builtins.ValueError"
    assert exception_path("Oops", None) == "Oops"
    assert exception_path("LeaseExpired", "runledger.runtime.reaper.LeaseExpired: gone") == (
        "runledger.runtime.reaper.LeaseExpired"
    )
