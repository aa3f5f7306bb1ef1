"""``runledger schedules`` beside a stored schedule that cannot fire (a row for February 30th
written by hand or by an older version): listed as such, pausable, and resuming it is refused
with a message naming it."""

from __future__ import annotations

from typing import Any

import psycopg
from console import Cli, ok, parse_table, refused

import runledger
from runledger import ScheduleSpec

Conn = psycopg.Connection[Any]


def _feb30_beside_a_good_one(conn: Conn) -> None:
    conn.execute(
        "insert into runledger.schedules (name, cron, job_type, next_run_at) "
        "values ('feb30', '0 0 30 2 *', 'tick', now() - interval '1 minute')"
    )
    runledger.upsert_schedule(
        conn, ScheduleSpec(name="nightly", cron="0 3 * * *", job_type="report.build")
    )


def test_schedules_list_says_a_stored_schedule_cannot_fire(cli: Cli, autocommit_conn: Conn) -> None:
    _feb30_beside_a_good_one(autocommit_conn)

    feb30, nightly = parse_table(ok(cli("schedules", "list")))

    assert (feb30["NAME"], feb30["STATE"], feb30["NEXT RUN"]) == ("feb30", "invalid", "never")
    assert (nightly["NAME"], nightly["STATE"]) == ("nightly", "enabled")
    assert nightly["NEXT RUN"].startswith("in ")


def test_schedules_pause_then_resume_of_a_schedule_that_cannot_fire(
    cli: Cli, autocommit_conn: Conn
) -> None:
    _feb30_beside_a_good_one(autocommit_conn)

    assert ok(cli("schedules", "pause", "feb30")) == "paused schedule 'feb30'\n"
    message = refused(cli.inline("schedules", "resume", "feb30"))

    assert message.startswith("runledger: schedule 'feb30': invalid cron expression '0 0 30 2 *'")
    assert "never fire" in message
    assert "Traceback" not in message
    assert {s.name: s.enabled for s in runledger.list_schedules(autocommit_conn)} == {
        "feb30": False,
        "nightly": True,
    }
