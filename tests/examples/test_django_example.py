"""The Django example run as its README says: ``manage.py migrate``, ``runserver`` and
``runledger_worker`` as processes, and the README's requests over HTTP, on a fresh database."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import runledger

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"
# Never through a proxy from the environment: the server is on 127.0.0.1.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    for name in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Background processes, killed at the end of the test if still running."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(url: str, data: dict[str, str] | None = None) -> tuple[int, Any]:
    body = None if data is None else urllib.parse.urlencode(data).encode()
    try:
        with HTTP.open(url, data=body, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text.decode(errors="replace")


def poll(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_the_readme_commands_place_an_order_and_the_worker_confirms_and_receipts_it(
    empty_database: str, processes: list[subprocess.Popen[str]]
) -> None:
    env = environment(DATABASE_URL=empty_database)

    migrated = manage("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert "Applying runledger.0001_initial... OK" in migrated.stdout
    assert "Applying shop.0001_initial... OK" in migrated.stdout

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=EXAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(server)
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "runledger_worker", "--concurrency", "4"],
        cwd=EXAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    processes.append(worker)

    def server_up() -> bool:
        if server.poll() is not None:
            pytest.fail(f"runserver exited: {server.communicate()}")
        try:
            return request(f"{base}/orders/999999/")[0] == 404
        except OSError:
            return False

    poll(server_up, timeout=30, what="runserver to answer")

    status, placed = request(f"{base}/orders/", {"email": "ada@example.com", "total_cents": "4200"})
    assert status == 201, placed
    refused_status, refused = request(
        f"{base}/orders/", {"email": "bob@example.com", "total_cents": "250000"}
    )
    assert refused_status == 400
    assert refused == {"error": "250000 cents is over the credit limit", "kept": "nothing"}

    def done() -> Any:
        if worker.poll() is not None:
            pytest.fail(f"the worker exited: {worker.communicate()}")
        _, shown = request(f"{base}/orders/{placed['order']}/")
        # Both outcomes are written by the worker, each in its own transaction.
        finished = (
            shown["receipt"]["status"] == "SUCCESSFUL"
            and shown["confirm_job"]["status"] == "succeeded"
        )
        return shown if finished else None

    shown = poll(done, timeout=30, what="the order's job and task to finish")
    assert shown == {
        "order": placed["order"],
        "status": "confirmed",
        "confirm_job": {"status": "succeeded", "attempt": 1},
        "receipt": {
            "status": "SUCCESSFUL",
            "result": f"receipt for order {placed['order']} sent to ada@example.com",
        },
    }
    with psycopg.connect(empty_database, autocommit=True) as conn:
        emails = conn.execute("select email from shop_order").fetchall()
        work = conn.execute(
            "select job_type, status from runledger.jobs where job_type <> 'shop.daily_report' "
            "order by job_type"
        ).fetchall()
        schedules = [s.name for s in runledger.list_schedules(conn)]
    assert emails == [("ada@example.com",)]  # bob's order was rolled back ...
    assert work == [
        ("django.task", "succeeded"),
        ("shop.confirm_order", "succeeded"),
    ]  # ... and his jobs
    assert schedules == ["shop.daily-report"]

    worker.send_signal(signal.SIGTERM)
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "stopped" in out
    # Django's development server is not under test: its Ctrl-C shutdown once hung past 30 s
    # in CI, so it is simply terminated.
    server.terminate()
    server.communicate(timeout=30)


def test_runledger_migrate_then_migrate_and_the_shops_models_need_no_new_migration(
    empty_database: str,
) -> None:
    env = environment(DATABASE_URL=empty_database)

    first = manage("runledger_migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "Applied runledger migrations" in first.stdout
    migrated = manage("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    again = manage("runledger_migrate", env=env)
    assert "already at version" in again.stdout
    check = manage("makemigrations", "--check", "--dry-run", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No changes detected" in check.stdout


@pytest.fixture
def own_tmpdir() -> Iterator[Path]:
    """A directory for TMPDIR outside pytest's, whose parent another pytest session may make
    private again at any time (the embedded server's OS user must traverse it)."""
    path = Path(tempfile.mkdtemp(prefix="runledger-django-example-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_without_database_url_the_commands_share_an_embedded_server(own_tmpdir: Path) -> None:
    env = environment(TMPDIR=str(own_tmpdir))

    migrated = manage("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    again = manage("runledger_migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert "already at version" in again.stdout
    assert (own_tmpdir / "runledger-django-example").is_dir()
