"""``runledger schedules list|pause|resume``."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from console import Cli, ok, parse_table, parse_time, refused

import runledger
from runledger import ScheduleSpec

Conn = psycopg.Connection[Any]


def _schedules(conn: Conn) -> None:
    runledger.upsert_schedule(
        conn, ScheduleSpec(name="nightly-report", cron="0 3 * * *", job_type="report.build")
    )
    runledger.upsert_schedule(
        conn,
        ScheduleSpec(
            name="sync",
            cron="*/5 * * * *",
            job_type="feed.sync",
            queue="feeds",
            timezone="Europe/Paris",
        ),
    )
    runledger.pause_schedule(conn, "sync")


def _enabled(conn: Conn) -> dict[str, bool]:
    return {s.name: s.enabled for s in runledger.list_schedules(conn)}


def test_schedules_list_is_an_aligned_table_of_every_schedule(
    cli: Cli, autocommit_conn: Conn
) -> None:
    _schedules(autocommit_conn)

    nightly, sync = parse_table(ok(cli("schedules", "list")))

    assert (nightly["NAME"], nightly["ORIGIN"], nightly["CRON"], nightly["TIMEZONE"]) == (
        "nightly-report",
        "api",
        "0 3 * * *",
        "UTC",
    )
    assert (nightly["JOB TYPE"], nightly["QUEUE"], nightly["STATE"]) == (
        "report.build",
        "default",
        "enabled",
    )
    assert nightly["NEXT RUN"].startswith("in ")
    assert (sync["NAME"], sync["QUEUE"], sync["STATE"], sync["NEXT RUN"]) == (
        "sync",
        "feeds",
        "paused",
        "",
    )


def test_schedules_list_json_has_every_schedule_with_times_as_strings(
    cli: Cli, autocommit_conn: Conn
) -> None:
    _schedules(autocommit_conn)

    nightly, sync = json.loads(ok(cli("schedules", "list", "--json")))

    assert (nightly["name"], nightly["origin"], nightly["enabled"], nightly["cron"]) == (
        "nightly-report",
        "api",
        True,
        "0 3 * * *",
    )
    parse_time(nightly["next_run_at"])
    assert nightly["last_run_at"] is None
    assert (sync["name"], sync["enabled"], sync["timezone"]) == ("sync", False, "Europe/Paris")


def test_schedules_pause_and_resume_change_the_schedule_and_say_so(
    cli: Cli, autocommit_conn: Conn
) -> None:
    _schedules(autocommit_conn)

    paused = ok(cli("schedules", "pause", "nightly-report"))
    assert paused == "paused schedule 'nightly-report'\n"
    assert _enabled(autocommit_conn)["nightly-report"] is False
    assert ok(cli.inline("schedules", "pause", "nightly-report")) == (
        "schedule 'nightly-report' is already paused\n"
    )

    resumed = ok(cli("schedules", "resume", "nightly-report"))
    assert resumed.startswith("resumed schedule 'nightly-report'; next run ")
    assert _enabled(autocommit_conn)["nightly-report"] is True
    assert ok(cli.inline("schedules", "resume", "nightly-report")) == (
        "schedule 'nightly-report' is not paused\n"
    )


def test_schedules_pause_or_resume_of_an_unknown_name_exits_1(cli: Cli) -> None:
    assert refused(cli("schedules", "pause", "nope")) == "runledger: no schedule named 'nope'\n"
    assert refused(cli.inline("schedules", "resume", "nope")) == (
        "runledger: no schedule named 'nope'\n"
    )
