"""``runledger events --job ID | --run ID``: the ledger's timeline."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import psycopg
from console import Cli, Ledger, ok, parse_table, parse_time, refused

import runledger
from runledger import WorkflowBuilder

Conn = psycopg.Connection[Any]


def test_events_of_a_job_are_its_timeline_oldest_first(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "import.feed")
    ledger.fail(ledger.claim("import.feed"), retry=True, message="feed timed out")
    ledger.succeed(ledger.claim("import.feed"))

    out = ok(cli("events", "--job", str(job_id)))

    assert out.splitlines()[0].split() == ["TIME", "ELAPSED", "EVENT", "ATTEMPT", "DETAILS"]
    rows = parse_table(out)
    assert [(r["EVENT"], r["ATTEMPT"]) for r in rows] == [
        ("job.enqueued", ""),
        ("job.started", "1"),
        ("job.retrying", "1"),
        ("job.started", "2"),
        ("job.succeeded", "2"),
    ]
    times = [datetime.datetime.fromisoformat(r["TIME"]) for r in rows]
    assert times == sorted(times)
    assert all(r["TIME"].endswith("Z") for r in rows)
    assert rows[0]["ELAPSED"] == "+0ms"
    assert rows[1]["DETAILS"] == "worker=cli-test-worker"
    assert 'error="feed timed out"' in rows[2]["DETAILS"]
    assert "retry_reason=policy" in rows[2]["DETAILS"]


def test_events_of_a_run_name_the_steps_and_their_jobs(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    run_id = runledger.enqueue_workflow(
        autocommit_conn,
        WorkflowBuilder("order").step("pack", job="pack").step("ship", job="ship", after="pack")
        .build(),
    )  # fmt: skip
    pack = ledger.claim("pack")
    ledger.succeed(pack)

    rows = parse_table(ok(cli("events", "--run", str(run_id))))

    assert [(r["EVENT"], r["STEP"]) for r in rows] == [
        ("run.enqueued", ""),
        ("step.queued", "pack"),
        ("job.enqueued", "pack"),
        ("job.started", "pack"),
        ("job.succeeded", "pack"),
        ("step.succeeded", "pack"),
        ("step.queued", "ship"),
        ("job.enqueued", "ship"),
    ]
    assert rows[0]["DETAILS"] == "name=order"
    assert {r["JOB"] for r in rows if r["EVENT"] == "job.started"} == {str(pack.id)}


def test_events_json_is_the_list_of_event_records(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "email.send")
    ledger.succeed(ledger.claim("email.send"))

    events = json.loads(ok(cli("events", "--json", "--job", str(job_id))))

    assert [e["kind"] for e in events] == ["job.enqueued", "job.started", "job.succeeded"]
    assert {uuid.UUID(e["job_id"]) for e in events} == {job_id}
    assert events[1]["data"] == {"worker": "cli-test-worker"}
    assert events[1]["attempt"] == 1
    assert parse_time(events[0]["occurred_at"]) <= parse_time(events[2]["occurred_at"])


def test_events_needs_exactly_one_of_job_run_and_queue_and_an_existing_job_or_run(cli: Cli) -> None:
    missing = uuid.uuid4()

    assert "one of the arguments --job --run --queue is required" in refused(cli("events"), code=2)
    assert "not allowed with argument" in refused(
        cli.inline("events", "--job", str(missing), "--run", str(missing)), code=2
    )
    assert refused(cli.inline("events", "--job", str(missing))) == f"runledger: no job {missing}\n"
    assert refused(cli.inline("events", "--run", str(missing))) == (
        f"runledger: no workflow run {missing}\n"
    )
