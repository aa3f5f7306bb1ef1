"""``runledger queues list|limit|pause|resume`` and ``runledger events --queue``: every change
goes through the queue settings API, so it is what the claim obeys and it writes its event."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from console import Cli, Ledger, ok, parse_fields, parse_table, parse_time, refused

import runledger
from runledger.cli._queue_settings import who

Conn = psycopg.Connection[Any]


def _events(conn: Conn, queue: str) -> list[tuple[str, Any]]:
    return [(e.kind, e.data) for e in runledger.list_events(conn, queue=queue)]


def _jobs(conn: Conn, queue: str, count: int, job_type: str = "mail.send") -> None:
    for _ in range(count):
        runledger.enqueue(conn, job_type, {}, queue=queue)


def test_queues_list_shows_settings_beside_running_and_queued_jobs(
    cli: Cli, autocommit_conn: Conn, ledger: Ledger
) -> None:
    _jobs(autocommit_conn, "mail", 3)
    ledger.claim("mail.send", queue="mail")
    runledger.enqueue(autocommit_conn, "mail.send", {}, queue="mail", delay=3600)
    _jobs(autocommit_conn, "reports", 1, "report.build")
    runledger.set_queue_limits(autocommit_conn, "mail", concurrency=5, rate=10, per=60)
    runledger.pause_queue(autocommit_conn, "mail", by="alice@ops")
    runledger.set_queue_limits(autocommit_conn, "quiet", concurrency=2)  # settings, no jobs

    rows = parse_table(ok(cli("queues", "list")))

    assert [row["QUEUE"] for row in rows] == ["mail", "quiet", "reports"]
    mail, quiet, reports = rows
    assert (mail["STATE"], mail["PAUSED BY"], mail["RUNNING"], mail["RATE"]) == (
        "paused",
        "alice@ops",
        "1/5",
        "10/60s",
    )
    assert mail["PAUSED"].endswith(" ago")
    assert (mail["QUEUED"], mail["DUE"]) == ("3", "2")
    assert (quiet["STATE"], quiet["RUNNING"], quiet["RATE"], quiet["QUEUED"]) == (
        "active",
        "0/2",
        "",
        "0",
    )
    assert (reports["STATE"], reports["RUNNING"], reports["QUEUED"], reports["PAUSED"]) == (
        "active",
        "0",
        "1",
        "",
    )


def test_queues_list_json_has_settings_and_counts(cli: Cli, autocommit_conn: Conn) -> None:
    _jobs(autocommit_conn, "mail", 2)
    runledger.set_queue_limits(autocommit_conn, "mail", rate=3)
    runledger.pause_queue(autocommit_conn, "mail", by="bob")

    [mail] = json.loads(ok(cli.inline("queues", "list", "--json")))

    parse_time(mail["paused_at"])
    parse_time(mail["updated_at"])
    assert {k: v for k, v in mail.items() if k not in ("paused_at", "updated_at")} == {
        "queue": "mail",
        "paused": True,
        "paused_by": "bob",
        "concurrency": None,
        "rate": 3,
        "per": 1.0,
        "running": 0,
        "queued": 2,
        "due": 2,
    }


def test_queues_list_says_so_when_there_is_nothing(cli: Cli) -> None:
    empty = ok(cli.inline("queues", "list"))
    assert empty == "no queue has settings, queued jobs or running jobs\n"
    assert json.loads(ok(cli.inline("queues", "list", "--json"))) == []


def test_queues_limit_sets_keeps_and_removes_limits_and_prints_them(
    cli: Cli, autocommit_conn: Conn
) -> None:
    first = parse_fields(ok(cli("queues", "limit", "mail", "--concurrency", "5", "--rate", "10")))
    assert first == {"queue": "mail", "state": "active", "concurrency": "5", "rate": "10/s"}

    # Unspecified limits are kept; --per alone changes the rate's window.
    second = parse_fields(ok(cli.inline("queues", "limit", "mail", "--per", "60")))
    assert (second["concurrency"], second["rate"]) == ("5", "10/60s")

    # "none" removes one limit and keeps the other.
    third = parse_fields(ok(cli.inline("queues", "limit", "mail", "--concurrency", "none")))
    assert (third["concurrency"], third["rate"]) == ("none", "10/60s")

    settings = runledger.queue_settings(autocommit_conn, "mail")
    assert (settings.concurrency, settings.rate, settings.per) == (None, 10, 60.0)
    limited = [data for kind, data in _events(autocommit_conn, "mail")]
    assert [(d["concurrency"], d["rate"], d["per"]) for d in limited] == [
        (5, 10, 1.0),
        (5, 10, 60.0),
        (None, 10, 60.0),
    ]
    # The subprocess and in-process runs both default --by to user@host.
    assert {d["by"] for d in limited} == {who()}
    assert "@" in who()


def test_queues_limit_records_by(cli: Cli, autocommit_conn: Conn) -> None:
    ok(cli.inline("queues", "limit", "mail", "--rate", "none", "--by", "deploy-42"))

    assert _events(autocommit_conn, "mail") == [
        ("queue.limited", {"by": "deploy-42", "concurrency": None, "rate": None, "per": None})
    ]


def test_queues_limit_refuses_an_invalid_limit_writing_nothing(
    cli: Cli, autocommit_conn: Conn
) -> None:
    runledger.set_queue_limits(autocommit_conn, "mail", concurrency=3)

    for args in (["--concurrency", "0"], ["--rate", "-1"], ["--rate", "5", "--per", "0"]):
        result = cli.inline("queues", "limit", "mail", *args)
        err = refused(result)
        assert err.startswith("runledger: queue 'mail': "), err
        assert err.count("\n") == 1
        assert result.stdout == ""

    assert runledger.queue_settings(autocommit_conn, "mail").concurrency == 3
    assert len(_events(autocommit_conn, "mail")) == 1


def test_queues_limit_without_a_limit_or_with_a_malformed_one_is_a_usage_error(
    cli: Cli, autocommit_conn: Conn
) -> None:
    nothing = refused(cli.inline("queues", "limit", "mail"), code=2)
    malformed = refused(cli.inline("queues", "limit", "mail", "--rate", "lots"), code=2)

    assert "give --concurrency, --rate or --per" in nothing
    assert "'lots' is neither a whole number nor 'none'" in malformed
    assert runledger.list_queue_settings(autocommit_conn) == []


def test_a_blank_queue_is_refused_in_one_line(cli: Cli, autocommit_conn: Conn) -> None:
    for command in (["limit", " ", "--rate", "1"], ["pause", ""], ["resume", " "]):
        err = refused(cli.inline("queues", *command))
        assert err.startswith("runledger: queue must be a non-blank string"), command
        assert err.count("\n") == 1

    assert runledger.list_queue_settings(autocommit_conn) == []


def test_queues_pause_and_resume_write_their_events_once(cli: Cli, autocommit_conn: Conn) -> None:
    paused = ok(cli("queues", "pause", "mail", "--reason", "db maintenance", "--by", "alice"))
    assert paused.startswith("paused queue 'mail'; jobs already running keep running\n")
    shown = parse_fields(paused.split("\n", 1)[1])
    assert shown["state"].startswith("paused since ")
    assert shown["state"].endswith(" by alice")
    assert runledger.queue_settings(autocommit_conn, "mail").paused

    again = ok(cli.inline("queues", "pause", "mail", "--by", "bob"))
    assert again.startswith("queue 'mail' was already paused\n")
    assert parse_fields(again.split("\n", 1)[1])["state"].endswith(" by alice")

    resumed = ok(cli("queues", "resume", "mail", "--by", "carol"))
    assert resumed.startswith("resumed queue 'mail' after ")
    assert parse_fields(resumed.split("\n", 1)[1])["state"] == "active"
    assert not runledger.queue_settings(autocommit_conn, "mail").paused

    idle = ok(cli.inline("queues", "resume", "mail"))
    assert idle.startswith("queue 'mail' was not paused\n")

    events = _events(autocommit_conn, "mail")
    assert [kind for kind, _ in events] == ["queue.paused", "queue.resumed"]
    assert events[0][1] == {"by": "alice", "reason": "db maintenance"}
    assert events[1][1]["by"] == "carol"


def test_resuming_a_queue_never_set_changes_nothing(cli: Cli, autocommit_conn: Conn) -> None:
    assert ok(cli.inline("queues", "resume", "fresh")).startswith("queue 'fresh' was not paused")
    assert _events(autocommit_conn, "fresh") == []


def test_events_queue_shows_the_queue_settings_timeline(cli: Cli, autocommit_conn: Conn) -> None:
    runledger.set_queue_limits(autocommit_conn, "mail", concurrency=2, by="alice")
    runledger.pause_queue(autocommit_conn, "mail", by="bob", reason="incident 7")
    runledger.resume_queue(autocommit_conn, "mail", by="bob")
    runledger.pause_queue(autocommit_conn, "other", by="eve")

    rows = parse_table(ok(cli("events", "--queue", "mail")))

    assert [row["EVENT"] for row in rows] == ["queue.limited", "queue.paused", "queue.resumed"]
    assert "ATTEMPT" not in rows[0]
    assert {"by=alice", "concurrency=2", "rate=null"} <= set(rows[0]["DETAILS"].split())
    assert 'reason="incident 7"' in rows[1]["DETAILS"]
    assert ok(cli.inline("events", "--queue", "nothing-here")) == "no events\n"
    [event] = json.loads(ok(cli.inline("events", "--queue", "other", "--json")))
    assert (event["kind"], event["queue"], event["data"]["by"]) == ("queue.paused", "other", "eve")
