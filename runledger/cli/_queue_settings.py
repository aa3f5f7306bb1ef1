"""``runledger queues list|limit|pause|resume``: the queues' flow-control settings.

Every change goes through ``runledger.set_queue_limits``, ``pause_queue`` or
``resume_queue`` (so it writes its ``queue.*`` event), with ``--by`` (default ``user@host``)
naming who made it. Every runtime obeys a change from its next claim.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import socket
from typing import Any

from runledger.cli._arguments import Subcommands
from runledger.cli._database import reading, writing
from runledger.cli._render import age, duration, fields, print_json, record, table, timestamp
from runledger.postgres.overview import QueueState, queue_overview, server_now
from runledger.postgres.queues import (
    KEEP,
    QueueSettings,
    pause_queue,
    queue_settings,
    resume_queue,
    set_queue_limits,
)

HEADERS = ("QUEUE", "STATE", "PAUSED", "PAUSED BY", "RUNNING", "RATE", "QUEUED", "DUE")

NONE = "none"
"""What ``--concurrency`` and ``--rate`` take to remove the limit."""


def who() -> str:
    """``user@host``: the default ``--by``, recorded in the ``queue.*`` events."""
    try:
        user = getpass.getuser()
    except OSError:  # no login name and no passwd entry (a bare container)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def limit_value(text: str) -> int | None:
    """An argument type for ``--concurrency`` and ``--rate``: a whole number, or ``none``.

    The range is the library's to check (``InvalidQueueLimit``, exit 1), so that the CLI
    and ``set_queue_limits`` accept the same values.
    """
    if text.strip().lower() == NONE:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor 'none'") from None


limit_value.__name__ = "limit"


def seconds(text: str) -> float:
    """An argument type for ``--per``: a number of seconds (the library checks the range)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def rate_text(settings: QueueSettings) -> str:
    """``10/s``, ``100/60s``, ``5/0.5s``, or "" without a rate."""
    if settings.rate is None:
        return ""
    per = settings.per if settings.per is not None else 1.0
    return f"{settings.rate}/s" if per == 1 else f"{settings.rate}/{per:g}s"


def _running(state: QueueState) -> str:
    limit = state.settings.concurrency
    return str(state.running) if limit is None else f"{state.running}/{limit}"


def _row(state: QueueState, now: datetime.datetime) -> tuple[str, ...]:
    settings = state.settings
    return (
        settings.queue,
        "paused" if settings.paused else "active",
        age(settings.paused_at, now),
        settings.paused_by or "",
        _running(state),
        rate_text(settings),
        str(state.queued),
        str(state.due),
    )


def _json(state: QueueState) -> dict[str, Any]:
    counts = {"running": state.running, "queued": state.queued, "due": state.due}
    return {**record(state.settings), **counts}


def _list(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        now = server_now(conn)
        states = queue_overview(conn)
    if args.json:
        print_json([_json(state) for state in states])
        return 0
    if not states:
        print("no queue has settings, queued jobs or running jobs")
        return 0
    print(table(HEADERS, [_row(state, now) for state in states]))
    return 0


def describe(settings: QueueSettings) -> str:
    """A queue's settings as a key/value block, as ``limit``, ``pause`` and ``resume`` print
    them."""
    state = "active"
    if settings.paused:
        by = f" by {settings.paused_by}" if settings.paused_by else ""
        state = f"paused since {timestamp(settings.paused_at)}{by}"
    concurrency = NONE if settings.concurrency is None else str(settings.concurrency)
    return fields(
        [
            ("queue", settings.queue),
            ("state", state),
            ("concurrency", concurrency),
            ("rate", rate_text(settings) or NONE),
        ]
    )


def _limit(args: argparse.Namespace) -> int:
    if args.concurrency is KEEP and args.rate is KEEP and args.per is KEEP:
        args.usage("give --concurrency, --rate or --per")
    with writing(args) as conn:
        settings = set_queue_limits(
            conn, args.queue, concurrency=args.concurrency, rate=args.rate, per=args.per,
            by=args.by,
        )  # fmt: skip
    print(describe(settings))
    return 0


def _pause(args: argparse.Namespace) -> int:
    with writing(args) as conn, conn.transaction():
        # Read before the change only to word the message: pause_queue itself decides, under
        # the queue's row lock, and writes no event for a queue already paused.
        was = queue_settings(conn, args.queue)
        settings = pause_queue(conn, args.queue, by=args.by, reason=args.reason)
    if was.paused:
        print(f"queue {args.queue!r} was already paused")
    else:
        print(f"paused queue {args.queue!r}; jobs already running keep running")
    print(describe(settings))
    return 0


def _since(settings: QueueSettings, now: datetime.datetime) -> float:
    assert settings.paused_at is not None
    return (now - settings.paused_at).total_seconds()


def _resume(args: argparse.Namespace) -> int:
    with writing(args) as conn, conn.transaction():
        now = server_now(conn)
        was = queue_settings(conn, args.queue)
        settings = resume_queue(conn, args.queue, by=args.by)
    if not was.paused:
        print(f"queue {args.queue!r} was not paused")
    else:
        paused = "" if was.paused_at is None else f" after {duration(_since(was, now))}"
        print(f"resumed queue {args.queue!r}{paused}")
    print(describe(settings))
    return 0


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``queues`` and its subcommands; ``database`` and ``as_json`` give --dsn, --json."""
    queues = commands.add_parser(
        "queues",
        help="list queues with their limits; limit, pause and resume them",
        description="Flow control across every runtime: a queue's concurrency limit (jobs "
        "running at once), rate limit (starts per window) and pause. Every runtime obeys a "
        "change from its next claim; each change writes a queue.* event naming --by.",
    )
    actions = queues.add_subparsers(dest="action", required=True, metavar="ACTION")
    by = argparse.ArgumentParser(add_help=False)
    by.add_argument(
        "--by",
        default=who(),
        metavar="WHO",
        help="who makes the change, recorded in its event (default: user@host)",
    )

    listing = actions.add_parser(
        "list",
        parents=[database, as_json],
        help="every queue with settings or with queued or running jobs",
        description="Every queue that has settings or queued or running jobs: whether it is "
        "paused (since when, by whom), its running jobs over its concurrency limit, its rate "
        "limit, and its queued jobs (DUE: those whose run_at has come).",
    )
    listing.set_defaults(func=_list)

    limit = actions.add_parser(
        "limit",
        parents=[database, by],
        help="set or remove a queue's concurrency and rate limits",
        description="Set a queue's limits; an option not given keeps its limit, 'none' removes "
        "it. Jobs already running keep running when a limit is lowered. Prints the resulting "
        "settings.",
    )
    limit.add_argument("queue", metavar="QUEUE")
    limit.add_argument(
        "--concurrency",
        type=limit_value,
        default=KEEP,
        metavar="N|none",
        help="the most of its jobs running at once across all runtimes",
    )
    limit.add_argument(
        "--rate",
        type=limit_value,
        default=KEEP,
        metavar="N|none",
        help="the most starts per --per seconds across all runtimes",
    )
    limit.add_argument(
        "--per",
        type=seconds,
        default=KEEP,
        metavar="SECONDS",
        help="the rate's window (default: the current one, else 1)",
    )
    limit.set_defaults(func=_limit, usage=limit.error)

    pause = actions.add_parser(
        "pause",
        parents=[database, by],
        help="stop claiming a queue's jobs until it is resumed",
        description="Stop every runtime claiming the queue's jobs; jobs already running run "
        "to their end, and enqueueing still works.",
    )
    pause.add_argument("queue", metavar="QUEUE")
    pause.add_argument("--reason", help="why, recorded in the queue.paused event")
    pause.set_defaults(func=_pause)

    resume = actions.add_parser(
        "resume", parents=[database, by], help="claim a paused queue's jobs again"
    )
    resume.add_argument("queue", metavar="QUEUE")
    resume.set_defaults(func=_resume)
