"""``runledger schedules list|pause|resume``: the cron schedules and their next ticks.

``list`` shows a stored schedule that cannot fire (a row written by hand or by an older
version) as ``invalid``; the scheduler skips it.
"""

from __future__ import annotations

import argparse
import datetime

from runledger.cli._arguments import Subcommands
from runledger.cli._database import reading, writing
from runledger.cli._render import age, print_json, record, table, when
from runledger.core.schedule import check_ticks
from runledger.errors import ScheduleNotFound, ValidationError
from runledger.postgres.overview import server_now
from runledger.postgres.schedules import (
    ScheduleRecord,
    list_schedules,
    pause_schedule,
    resume_schedule,
)

HEADERS = (
    "NAME", "ORIGIN", "CRON", "TIMEZONE", "JOB TYPE", "QUEUE", "STATE", "NEXT RUN", "LAST RUN",
    "LAST JOB",
)  # fmt: skip


def _fires(schedule: ScheduleRecord) -> bool:
    """False for a stored row no ``ScheduleSpec`` accepts (written by hand or by an older
    version): the scheduler skips it, so its ``next_run_at`` means nothing."""
    try:
        check_ticks(schedule.name, schedule.cron, schedule.timezone)
    except ValidationError:
        return False
    return True


def _row(schedule: ScheduleRecord, now: datetime.datetime) -> tuple[str, ...]:
    fires = _fires(schedule)
    if not fires:
        state, upcoming = "invalid", "never"
    elif schedule.enabled:
        state, upcoming = "enabled", age(schedule.next_run_at, now)
    else:
        state, upcoming = "paused", ""
    return (
        schedule.name,
        schedule.origin,
        schedule.cron,
        schedule.timezone,
        schedule.job_type,
        schedule.queue,
        state,
        upcoming,
        age(schedule.last_run_at, now),
        "" if schedule.last_job_id is None else str(schedule.last_job_id),
    )


def _list(args: argparse.Namespace) -> int:
    with reading(args) as conn:
        now = server_now(conn)
        schedules = list_schedules(conn)
    if args.json:
        print_json([record(schedule) for schedule in schedules])
        return 0
    if not schedules:
        print("no schedules")
        return 0
    print(table(HEADERS, [_row(schedule, now) for schedule in schedules]))
    return 0


def _find(schedules: list[ScheduleRecord], name: str) -> ScheduleRecord:
    for schedule in schedules:
        if schedule.name == name:
            return schedule
    raise ScheduleNotFound(name=name)


def _pause(args: argparse.Namespace) -> int:
    with writing(args) as conn:
        if not _find(list_schedules(conn), args.name).enabled:
            print(f"schedule {args.name!r} is already paused")
            return 0
        pause_schedule(conn, args.name)
    print(f"paused schedule {args.name!r}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    with writing(args) as conn:
        if _find(list_schedules(conn), args.name).enabled:
            print(f"schedule {args.name!r} is not paused")
            return 0
        resume_schedule(conn, args.name)
        now = server_now(conn)
        resumed = _find(list_schedules(conn), args.name)
    print(f"resumed schedule {args.name!r}; next run {when(resumed.next_run_at, now)}")
    return 0


def add_commands(
    commands: Subcommands, database: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``schedules`` and its subcommands; ``database`` and ``as_json`` give --dsn, --json."""
    schedules = commands.add_parser("schedules", help="list, pause and resume cron schedules")
    actions = schedules.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", parents=[database, as_json], help="every schedule")
    listing.set_defaults(func=_list)

    pause = actions.add_parser(
        "pause", parents=[database], help="stop firing a schedule until it is resumed"
    )
    pause.add_argument("name", metavar="NAME")
    pause.set_defaults(func=_pause)

    resume = actions.add_parser(
        "resume",
        parents=[database],
        help="fire a paused schedule again from its next tick",
        description="Fire a paused schedule again from its next tick; the ticks missed while "
        "it was paused are skipped.",
    )
    resume.add_argument("name", metavar="NAME")
    resume.set_defaults(func=_resume)
