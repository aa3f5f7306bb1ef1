"""The `runledger` console script as a user runs it: `worker` refusing bad input, `status`
on a working database, on one without the schema and on an unreachable server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

import runledger

UNREACHABLE = "postgresql://runledger@127.0.0.1:1/nowhere?connect_timeout=5"


def cli(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m runledger.cli ARGS`` with no RUNLEDGER_* settings from outside."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    environ.pop("DATABASE_URL", None)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runledger.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def column_starts(header: str, names: list[str]) -> list[int]:
    return [header.index(name) for name in names]


# --- worker refuses bad input ------------------------------------------------------------------


def test_worker_with_an_unimportable_app_exits_1_naming_the_module(dsn: str) -> None:
    result = cli("worker", "--dsn", dsn, "--app", "nosuchmodule:registry")

    assert result.returncode == 1
    assert "runledger: cannot import 'nosuchmodule'" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_with_an_app_attribute_that_is_not_a_registry_exits_1(
    dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_app.py").write_text("registry = 42\n")

    result = cli("worker", "--dsn", dsn, "--app", "cli_app:registry", cwd=tmp_path)

    assert result.returncode == 1
    assert "is not a runledger.Registry (got int)" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_with_a_bad_environment_setting_exits_1_naming_the_variable(
    dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_app.py").write_text("import runledger\nregistry = runledger.Registry()\n")

    result = cli(
        "worker", "--dsn", dsn, "--app", "cli_app:registry",
        cwd=tmp_path, env={"RUNLEDGER_CONCURRENCY": "abc"},
    )  # fmt: skip

    assert result.returncode == 1
    assert "RUNLEDGER_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_with_concurrency_0_exits_with_a_message_and_no_traceback(
    dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_app.py").write_text("import runledger\nregistry = runledger.Registry()\n")

    result = cli(
        "worker", "--dsn", dsn, "--app", "cli_app:registry", "--concurrency", "0", cwd=tmp_path
    )

    assert result.returncode in (1, 2)
    assert "concurrency" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_without_a_dsn_exits_1_saying_how_to_give_one(tmp_path: Path) -> None:
    (tmp_path / "cli_app.py").write_text("import runledger\nregistry = runledger.Registry()\n")

    result = cli("worker", "--app", "cli_app:registry", cwd=tmp_path)

    assert result.returncode == 1
    assert "RUNLEDGER_DSN" in result.stderr


# --- status ----------------------------------------------------------------------------------


def test_status_prints_an_aligned_table_with_a_queued_job_of_an_unregistered_type(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    runledger.enqueue(autocommit_conn, "nobody.handles.this", queue="orphans")
    runledger.enqueue(autocommit_conn, "x", queue="a-much-longer-queue-name")
    runledger.enqueue(autocommit_conn, "x", queue="a-much-longer-queue-name")

    result = cli("status", "--dsn", dsn)

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    names = ["QUEUE", "STATUS", "JOBS", "OLDEST DUE", "JOB TYPES"]
    starts = column_starts(header, names)
    assert starts[0] == 0
    assert len(rows) == 2
    cells = {}
    for row in rows:
        # Every cell starts at its header's column and the gap before it is blank.
        for start in starts[1:]:
            assert row[start - 2 : start] == "  ", (row, start)
            assert row[start] != " ", (row, start)
        split = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        cells[split[0]] = split[1:]
    assert cells["orphans"][0] == "queued"
    assert cells["orphans"][1] == "1"
    assert cells["orphans"][2].endswith("s")
    assert cells["orphans"][3] == "nobody.handles.this"
    assert cells["a-much-longer-queue-name"][:2] == ["queued", "2"]


def test_status_json_is_valid_json_listing_the_queued_job(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    runledger.enqueue(autocommit_conn, "nobody.handles.this", queue="orphans")

    result = cli("status", "--dsn", dsn, "--json")

    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)
    assert entry["queue"] == "orphans"
    assert entry["status"] == "queued"
    assert entry["jobs"] == 1
    assert entry["job_types"] == ["nobody.handles.this"]
    assert isinstance(entry["oldest_due_seconds"], float)


def test_status_on_a_database_without_the_schema_exits_1_saying_to_run_migrate(
    empty_database: str,
) -> None:
    result = cli("status", "--dsn", empty_database)

    assert result.returncode == 1
    assert "runledger migrate" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_status_on_an_unreachable_server_exits_1_without_a_traceback() -> None:
    result = cli("status", "--dsn", UNREACHABLE)

    assert result.returncode == 1
    assert "runledger: cannot connect to the database" in result.stderr
    assert "Traceback" not in result.stderr
