"""The Flask example (examples/flask_app) against a fresh database of the test's own: driven by
Flask's test client, its workflow run by a ``Runtime``, and its README worker command run as a
subprocess and stopped with SIGTERM. Without ``DATABASE_URL``, ``flask run`` stops the embedded
server it started when it is stopped."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from flask import Flask

import runledger

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def example(dsn: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example's app module, configured (as its README says) by DATABASE_URL."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.delenv("RUNLEDGER_RUN_IN_PROCESS", raising=False)
    return importlib.import_module("examples.flask_app.app")


@pytest.fixture
def app(example: ModuleType) -> Iterator[Flask]:
    """The example app; its runledger store and its engine are closed after the test."""
    flask_app: Flask = example.create_app()
    yield flask_app
    example.jobs.close(flask_app, timeout=5)
    with flask_app.app_context():
        example.db.engine.dispose()


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query).fetchall()


def test_signup_enqueues_the_welcome_workflow_and_a_runtime_runs_it_to_completion(
    dsn: str, example: ModuleType, app: Flask
) -> None:
    client = app.test_client()

    signup = client.post("/signup", json={"email": "ada@example.com"})
    crash = client.post("/signup-then-crash", json={"email": "bob@example.com"})
    invalid = client.post("/signup", json={"email": "nobody"})

    assert signup.status_code == 201
    assert crash.status_code == 500
    assert invalid.status_code == 400
    assert signup.json is not None
    run_id = uuid.UUID(signup.json["run_id"])
    # The crashed request's rollback took its user and its workflow run with it.
    assert rows(dsn, "select email from users") == [("ada@example.com",)]
    assert rows(dsn, "select id from runledger.workflow_runs") == [(run_id,)]
    with runledger.Runtime(
        dsn,
        example.jobs.registry,
        concurrency=2,
        queues=["default", "mail"],
        poll_interval=0.2,
        listen=False,
        shutdown_timeout=5,
    ) as runtime:
        run = runledger.wait_for_run(runtime.store, run_id, timeout=30, poll_interval=0.2)

    assert run.status == runledger.RunStatus.SUCCEEDED
    assert run.result == {"sent_to": "ada@example.com"}
    assert rows(dsn, "select user_id, recipient, subject from sent_emails") == [
        (signup.json["user_id"], "ada@example.com", "Welcome!")
    ]
    assert client.get(f"/runs/{run_id}").json == {
        "name": "user.welcome",
        "status": "succeeded",
        "result": {"sent_to": "ada@example.com"},
        "steps": {"render": "succeeded", "send": "succeeded"},
    }
    assert client.get(f"/runs/{uuid.uuid4()}").status_code == 404


def test_the_readme_worker_command_runs_the_workflow_and_stops_on_sigterm(
    dsn: str, app: Flask, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLEDGER_", "FLASK_"))}
    env["DATABASE_URL"] = dsn
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "examples.flask_app.app",
             "runledger", "worker"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        signup = app.test_client().post("/signup", json={"email": "ada@example.com"})
        assert signup.status_code == 201
        assert signup.json is not None
        run = runledger.wait_for_run(
            dsn, uuid.UUID(signup.json["run_id"]), timeout=60, poll_interval=0.2
        )
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert run.status == runledger.RunStatus.SUCCEEDED, log.read_text()
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def _postgres_processes(data_dir: Path) -> list[int]:
    """The pids of the processes whose command line names ``data_dir`` (the postmaster's -D)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process exited meanwhile
            continue
        if any(str(data_dir).encode() in arg for arg in args):
            found.append(int(cmdline.parent.name))
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the app is serving
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_flask_run_stops_the_embedded_postgres_it_started(
    stop: signal.Signals, tmp_path: Path
) -> None:
    # Without DATABASE_URL the example starts an embedded server in $TMPDIR: here, our own.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RUNLEDGER_", "FLASK_")) and k != "DATABASE_URL"
    }
    env["TMPDIR"] = str(tmp_path)
    data_dir = (tmp_path / "runledger-flask-example").resolve()
    port = _free_port()
    log = tmp_path / "flask.log"
    with log.open("w") as out:
        web = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "examples.flask_app.app",
             "run", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"http://127.0.0.1:{port}/runs/{uuid.uuid4()}"):
            assert web.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)  # polling for the server to answer, bounded by the deadline
        assert _postgres_processes(data_dir), "the example started no embedded server"

        web.send_signal(stop)
        web.wait(timeout=30)
    finally:
        if web.poll() is None:
            web.kill()
            web.wait()
    deadline = time.monotonic() + 30
    while (left := _postgres_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for the server's processes to exit, bounded by the deadline
    for pid in left:  # leave no server behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"postgres still running after {stop.name}:\n{log.read_text()}"
    assert "Traceback" not in log.read_text()
