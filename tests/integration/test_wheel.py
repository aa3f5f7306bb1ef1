"""The built wheel ships the migrations and can migrate an empty database from a fresh venv.

The distribution is ``runledger-pg`` (``runledger`` on PyPI is an unrelated project); the import
name stays ``runledger``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

from runledger.postgres.migrate import latest_version

ROOT = Path(__file__).resolve().parents[2]

DISTRIBUTION = "runledger-pg"

MIGRATE = """
import importlib.metadata, importlib.resources, os, sys
import psycopg, runledger
assert importlib.metadata.version("runledger-pg") == runledger.__version__
with psycopg.connect(os.environ["RUNLEDGER_WHEEL_DSN"], autocommit=True) as conn:
    print(runledger.migrate(conn))
print(runledger.__file__)
print(importlib.resources.files("runledger") / "sql" / "0001_runledger.sql")
"""


def _run(args: list[str | Path], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH and a cwd outside the checkout: the venv must import its installed copy.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra_env)
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_migrates_an_empty_database(
    tmp_path: Path, empty_database: str
) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, ROOT], cwd=tmp_path)
    # Wheel file names normalise the distribution name: runledger-pg -> runledger_pg.
    (wheel,) = dist.glob(f"{DISTRIBUTION.replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = archive.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert f"Name: {DISTRIBUTION}" in headers
    assert "runledger/sql/0001_runledger.sql" in names
    assert "runledger/py.typed" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--quiet", wheel], cwd=tmp_path)

    migrated = _run([python, "-c", MIGRATE], cwd=tmp_path, RUNLEDGER_WHEEL_DSN=empty_database)
    again = _run([venv / "bin" / "runledger", "migrate", "--dsn", empty_database], cwd=tmp_path)

    applied, module_file, sql_file = migrated.stdout.splitlines()
    assert applied == str(list(range(1, latest_version() + 1)))
    assert Path(module_file).is_relative_to(venv), module_file
    assert Path(sql_file).is_relative_to(venv), sql_file
    assert "already" in again.stdout
    with psycopg.connect(empty_database, autocommit=True) as conn:
        latest = conn.execute("select max(version) from runledger.schema_migrations").fetchone()
        assert latest == (latest_version(),)
        assert conn.execute("select to_regclass('runledger.jobs') is not null").fetchone() == (
            True,
        )
