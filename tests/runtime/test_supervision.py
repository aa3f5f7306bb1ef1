"""Supervision: loops survive their errors, and the runtime restarts a loop whose thread died."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

import runledger
from runledger.runtime.heartbeat import Heartbeat
from runledger.runtime.loop import Loop

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]


def test_loop_whose_step_raises_logs_the_traceback_and_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    again = threading.Event()

    def step(stop: threading.Event) -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise ValueError("step broke")
        again.set()
        stop.wait(0.05)

    loop = Loop("runledger-test-0", step, pause=0.01)
    loop.start()
    try:
        assert again.wait(5), "the step did not run again after raising"
        assert loop.alive()
        assert loop.restarts == 0
    finally:
        assert loop.stop(5)

    [record] = [r for r in caplog.records if r.name == "runledger.runtime"]
    assert record.levelno == logging.ERROR
    assert "runledger-test-0" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert "ValueError: step broke" in caplog.text
    assert not loop.alive()


def test_loop_on_exit_runs_in_its_thread_when_it_stops_and_when_it_dies(
    monkeypatch: pytest.MonkeyPatch, wait_until: WaitUntil
) -> None:
    exits: list[str] = []
    steps = threading.Event()
    monkeypatch.setattr(threading, "excepthook", lambda args: None)

    def step(stop: threading.Event) -> None:
        steps.set()
        stop.wait(5)

    loop = Loop(
        "runledger-test-0", step, on_exit=lambda: exits.append(threading.current_thread().name)
    )
    loop.start()
    assert steps.wait(5)
    assert exits == []  # not between steps, only at the end
    assert loop.stop(5)
    assert exits == ["runledger-test-0"]

    def dying(stop: threading.Event) -> None:
        raise Died()

    dead = Loop(
        "runledger-test-1", dying, on_exit=lambda: exits.append(threading.current_thread().name)
    )
    dead.start()
    wait_until(lambda: not dead.alive(), 5, "the loop's thread to die")
    assert exits == ["runledger-test-0", "runledger-test-1"]


class Died(BaseException):
    """Kills the thread it is raised in: Loop only survives ``Exception``."""


def test_runtime_supervisor_restarts_a_loop_whose_thread_died(
    runtime: RuntimeFactory,
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    beats: list[int] = []
    original = Heartbeat.step

    def dying_once(self: Heartbeat, stop: threading.Event) -> None:
        beats.append(len(beats))
        if len(beats) == 1:
            raise Died()
        original(self, stop)

    # Patched on the class before the runtime binds heartbeat.step into its Loop.
    monkeypatch.setattr(Heartbeat, "step", dying_once)
    uncaught: list[type[BaseException] | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_type))
    registry = runledger.Registry()
    registry.handler("noop")(lambda ctx, payload: None)
    rt = runtime(registry)
    [heartbeat] = [loop for loop in rt.loops() if loop.name == "runledger-heartbeat-0"]

    wait_until(lambda: heartbeat.restarts >= 1 and heartbeat.alive(), 10, "a restart")
    wait_until(lambda: len(beats) >= 2, 5, "the restarted heartbeat to beat")

    assert uncaught == [Died]
    assert "runledger-heartbeat-0 died; restarting it" in caplog.text
    assert all(loop.alive() for loop in rt.loops())
