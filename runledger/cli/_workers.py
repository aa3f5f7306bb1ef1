"""``runledger workers`` (the live runtimes and the stale ones) and ``runledger health`` (a
container liveness probe: is this host's worker still beating?)."""

from __future__ import annotations

import argparse
import os
import socket

from runledger.cli._arguments import Subcommands
from runledger.cli._database import CliError, reading
from runledger.cli._render import age, duration, print_json, record, shorten, table
from runledger.postgres.overview import server_now
from runledger.postgres.workers import STALE_AFTER_LEASES, WorkerRecord, list_workers

DEFAULT_MAX_AGE = 60.0
HEADERS = [
    "ID",
    "HOST",
    "PID",
    "VERSION",
    "QUEUES",
    "CONCURRENCY",
    "HANDLERS",
    "STARTED",
    "LAST SEEN",
    "STATE",
]


def _workers(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        now = server_now(conn)
        workers = list_workers(conn)
    if args.json:
        print_json([record(worker) for worker in workers])
        return 0
    if not workers:
        print("no worker is registered")
        return 0
    print(
        table(
            HEADERS,
            [
                (
                    w.id,
                    w.host,
                    str(w.pid),
                    w.version,
                    ",".join(w.queues),
                    str(w.concurrency),
                    shorten(",".join(w.handlers), 40),
                    age(w.started_at, now),
                    f"{duration(w.last_seen_seconds)} ago",
                    "stale" if w.stale else "live",
                )
                for w in workers
            ],
        )
    )
    return 0


def process_exists(pid: int) -> bool:
    """True if a process ``pid`` runs in this PID namespace (signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _seen(worker: WorkerRecord) -> str:
    return f"worker {worker.id} (host {worker.host}, pid {worker.pid})"


def _health(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        workers = list_workers(conn)
    max_age = args.max_age
    if args.worker_id is not None:
        candidates = [w for w in workers if w.id == args.worker_id]
        if not candidates:
            raise CliError(f"unhealthy: no worker {args.worker_id} is registered")
    else:
        host = socket.gethostname()
        of_host = [w for w in workers if w.host == host]
        if not of_host:
            raise CliError(
                f"unhealthy: no worker of host {host} is registered (none started, or it stopped)"
            )
        candidates = [w for w in of_host if process_exists(w.pid)]
        if not candidates:
            pids = ", ".join(str(w.pid) for w in of_host)
            raise CliError(
                f"unhealthy: no worker of host {host} runs here (its registered pids {pids} "
                "are not running processes)"
            )
    freshest = min(candidates, key=lambda w: w.last_seen_seconds)
    if freshest.last_seen_seconds > max_age:
        raise CliError(
            f"unhealthy: {_seen(freshest)} was last seen "
            f"{duration(freshest.last_seen_seconds)} ago, more than --max-age {max_age:g}s"
        )
    print(f"ok: {_seen(freshest)} seen {duration(freshest.last_seen_seconds)} ago")
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``workers`` and ``health``; ``database`` and ``as_json`` give --dsn and --json."""
    workers = commands.add_parser(
        "workers",
        parents=[database, as_json],
        help="the registered workers, live and stale",
        description="One row per runtime that started and has not stopped cleanly: its id "
        "(the worker named in job attempts), host, pid, version, queues, concurrency and "
        "handlers, and when it was last seen. A worker not seen for "
        f"{STALE_AFTER_LEASES:g} lease (three missed heartbeats) is stale; reapers delete "
        "it after ten.",
    )
    workers.set_defaults(func=_workers)

    health = commands.add_parser(
        "health",
        parents=[database],
        help="exit 0 if this host's worker was seen lately (a liveness probe)",
        description="Exit 0 when a worker of this host whose process is alive (or the worker "
        "--worker-id names, wherever it runs) was seen within --max-age seconds; else exit "
        "1 with one line saying why. Run it where the worker runs (in its container: the "
        "hostname and the process ids are the container's).",
    )
    health.add_argument(
        "--max-age",
        type=_seconds,
        default=DEFAULT_MAX_AGE,
        metavar="SECONDS",
        help=f"the oldest last-seen time that passes (default {DEFAULT_MAX_AGE:g}); the "
        "heartbeat marks a worker seen every lease_seconds/3",
    )
    health.add_argument(
        "--worker-id", metavar="ID", help="check this worker (Runtime.worker_id), on any host"
    )
    health.set_defaults(func=_health)
