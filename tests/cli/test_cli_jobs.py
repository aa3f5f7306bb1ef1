"""``runledger jobs list|show|cancel|requeue`` on jobs with real attempts behind them."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import psycopg
from console import Cli, Ledger, ok, parse_fields, parse_table, parse_time, refused, split_sections

import runledger
from runledger import WorkflowBuilder
from runledger.core.progress import progress_json
from runledger.postgres.attempts import renew_leases
from runledger.runtime import outcome

LIST_COLUMNS = [
    "ID", "QUEUE", "TYPE", "STATUS", "ATTEMPTS", "CREATED", "RUN AT", "FINISHED", "LAST ERROR",
]  # fmt: skip


def _history(conn: psycopg.Connection[Any], ledger: Ledger) -> dict[str, uuid.UUID]:
    """One job per status, enqueued in this order: done, dead, busy, later, mail."""
    ids = {
        "done": runledger.enqueue(conn, "report.build", {"n": 1}),
        "dead": runledger.enqueue(conn, "import.feed", max_attempts=2),
        "busy": runledger.enqueue(conn, "charge"),
        "later": runledger.enqueue(conn, "report.build", delay=600),
        "mail": runledger.enqueue(conn, "email.send", {"to": "a@b.c"}, queue="mail"),
    }
    ledger.fail(ledger.claim("report.build"), retry=True, message="flaky disk")
    ledger.succeed(ledger.claim("report.build"), {"pages": 3})
    ledger.fail(ledger.claim("import.feed"), retry=True)
    ledger.fail(ledger.claim("import.feed"), retry=False, message="feed is gone")
    ledger.claim("charge")
    return ids


# --- list ------------------------------------------------------------------------------------


def test_jobs_list_is_an_aligned_table_newest_first(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ids = _history(autocommit_conn, ledger)

    out = ok(cli("jobs", "list"))

    assert out.splitlines()[0].split() == " ".join(LIST_COLUMNS).split()
    rows = parse_table(out)
    assert [r["ID"] for r in rows] == [
        str(ids[k]) for k in ("mail", "later", "busy", "dead", "done")
    ]
    by_id = {r["ID"]: r for r in rows}
    done, dead, busy = by_id[str(ids["done"])], by_id[str(ids["dead"])], by_id[str(ids["busy"])]
    assert (done["STATUS"], done["ATTEMPTS"], done["LAST ERROR"]) == (
        "succeeded", "2/5", "BoomError: flaky disk",
    )  # fmt: skip
    assert done["FINISHED"].endswith(" ago")
    assert done["RUN AT"] == ""
    assert (dead["STATUS"], dead["ATTEMPTS"], dead["LAST ERROR"]) == (
        "failed", "2/2", "BoomError: feed is gone",
    )  # fmt: skip
    assert (busy["STATUS"], busy["ATTEMPTS"], busy["FINISHED"]) == ("running", "1/5", "")
    later = by_id[str(ids["later"])]
    assert (later["STATUS"], later["ATTEMPTS"]) == ("queued", "0")
    assert later["RUN AT"].startswith("in ")
    assert by_id[str(ids["mail"])]["QUEUE"] == "mail"
    assert all(r["CREATED"].endswith(" ago") for r in rows)


def test_jobs_list_filters_by_status_queue_type_and_limit(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ids = _history(autocommit_conn, ledger)

    def listed(*options: str) -> list[str]:
        return [row["ID"] for row in parse_table(ok(cli.inline("jobs", "list", *options)))]

    assert listed("--status", "failed") == [str(ids["dead"])]
    assert listed("--queue", "mail") == [str(ids["mail"])]
    assert listed("--type", "report.build", "--status", "queued") == [str(ids["later"])]
    assert listed("--limit", "2") == [str(ids["mail"]), str(ids["later"])]
    assert ok(cli.inline("jobs", "list", "--type", "nothing.like.this")) == "no jobs match\n"


def test_jobs_list_json_has_every_field_with_uuids_and_times_as_strings(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ids = _history(autocommit_conn, ledger)

    jobs = json.loads(ok(cli("jobs", "list", "--json", "--status", "succeeded")))

    [done] = jobs
    assert uuid.UUID(done["id"]) == ids["done"]
    assert (done["status"], done["attempt"], done["max_attempts"]) == ("succeeded", 2, 5)
    assert done["payload"] == {"n": 1}
    assert done["output"] == {"pages": 3}
    assert parse_time(done["finished_at"]) >= parse_time(done["created_at"])
    assert done["workflow_run_id"] is None


def test_jobs_list_with_an_unknown_status_is_a_usage_error(cli: Cli) -> None:
    err = refused(cli.inline("jobs", "list", "--status", "exploded"), code=2)

    assert "invalid choice: 'exploded'" in err


# --- show ------------------------------------------------------------------------------------


def test_jobs_show_prints_the_job_its_attempts_and_the_last_traceback(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ids = _history(autocommit_conn, ledger)
    ledger.backdate(ids["dead"], 1, 75)

    details, attempts, traceback = split_sections(ok(cli("jobs", "show", str(ids["dead"]))))

    job = parse_fields(details)
    assert job["id"] == str(ids["dead"])
    assert (job["type"], job["queue"], job["status"]) == ("import.feed", "default", "failed")
    assert job["attempts"] == "2/2"
    assert job["last error"] == "BoomError: feed is gone"
    assert job["payload"] == "{}"
    assert job["created"].endswith(" ago)")
    assert job["created"][:20].endswith("Z")  # ISO-8601 UTC to the second, then the age
    assert "workflow" not in job
    first, second = parse_table(attempts)
    assert (first["ATTEMPT"], first["OUTCOME"], first["DURATION"]) == ("1", "failed", "1m15s")
    assert first["RETRY"].endswith("(policy)")
    assert first["ERROR"] == "BoomError: it broke"
    assert (second["ATTEMPT"], second["OUTCOME"], second["RETRY"]) == ("2", "failed", "")
    assert second["WORKER"] == "cli-test-worker"
    assert traceback.startswith("traceback of attempt 2 (")
    assert traceback.rstrip().endswith("BoomError: feed is gone")


def test_jobs_show_json_is_the_job_with_its_attempts(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ids = _history(autocommit_conn, ledger)

    job = json.loads(ok(cli("jobs", "show", "--json", str(ids["done"]))))

    assert job["id"] == str(ids["done"])
    assert job["status"] == "succeeded"
    assert [(a["attempt"], a["outcome"]) for a in job["attempts"]] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    first = job["attempts"][0]
    assert first["error_type"] == "BoomError"
    assert first["retry_reason"] == "policy"
    assert uuid.UUID(first["lease_token"])
    assert parse_time(first["finished_at"]) >= parse_time(first["started_at"])


def test_jobs_show_prints_the_progress_and_a_snoozed_attempt(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "import.feed")
    first = ledger.claim("import.feed")
    ledger._finish(outcome.snoozed(first, 0.0))
    running = ledger.claim("import.feed")
    at = datetime.datetime.now(datetime.UTC)
    with autocommit_conn.transaction():
        renew_leases(
            autocommit_conn,
            [(running.id, running.lease_token, None)],
            lease_seconds=300,
            progress={
                running.lease_token: progress_json(0.4, note="page 4 of 10", attempt=1, at=at)
            },
        )

    details, attempts = split_sections(ok(cli("jobs", "show", str(job_id))))
    shown = json.loads(ok(cli("jobs", "show", "--json", str(job_id))))

    job = parse_fields(details)
    assert job["attempts"] == "1/5"
    assert job["progress"].startswith("40% page 4 of 10 (attempt 1, ")
    assert job["progress"].endswith(" ago))")
    first_row, second_row = parse_table(attempts)
    assert (first_row["ATTEMPT"], first_row["OUTCOME"]) == ("1", "snoozed")
    assert first_row["RETRY"].endswith("(handler)")
    assert (second_row["ATTEMPT"], second_row["OUTCOME"]) == ("1", "(running)")
    assert shown["progress"]["fraction"] == 0.4
    assert shown["progress"]["note"] == "page 4 of 10"


def test_jobs_show_of_an_unknown_id_exits_1_and_of_a_malformed_one_exits_2(cli: Cli) -> None:
    missing = uuid.uuid4()

    assert refused(cli("jobs", "show", str(missing))) == f"runledger: no job {missing}\n"
    assert "'42' is not a job id" in refused(cli.inline("jobs", "show", "42"), code=2)


# --- cancel ----------------------------------------------------------------------------------


def test_jobs_cancel_cancels_a_queued_job_then_refuses_as_it_is_finished(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    job_id = runledger.enqueue(autocommit_conn, "email.send")

    first = ok(cli.inline("jobs", "cancel", str(job_id), "--reason", "customer asked"))
    again = cli("jobs", "cancel", str(job_id))

    assert first == f"cancelled job {job_id}\n"
    assert runledger.get_job(autocommit_conn, job_id).cancel_reason == "customer asked"
    assert refused(again) == (
        f"runledger: job {job_id} already finished (cancelled); nothing to cancel\n"
    )
    assert again.stdout == ""


def test_jobs_cancel_of_a_running_workflow_step_cancels_the_steps_after_it(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    run_id = runledger.enqueue_workflow(
        autocommit_conn,
        WorkflowBuilder("order").step("pack", job="pack").step("ship", job="ship", after="pack")
        .build(),
    )  # fmt: skip
    job = ledger.claim("pack")

    out = ok(cli("jobs", "cancel", str(job.id)))

    assert out.startswith(f"cancelled job {job.id} (step 'pack' of workflow run {run_id}")
    run = runledger.get_workflow_run(autocommit_conn, run_id)
    assert [(s.step_key, s.status) for s in run.steps] == [
        ("pack", "cancelled"),
        ("ship", "cancelled"),
    ]


def test_jobs_cancel_of_an_unknown_job_exits_1(cli: Cli) -> None:
    missing = uuid.uuid4()

    assert refused(cli.inline("jobs", "cancel", str(missing))) == f"runledger: no job {missing}\n"


# --- requeue ---------------------------------------------------------------------------------


def test_jobs_requeue_puts_a_failed_job_back_and_refuses_others(
    cli: Cli, ledger: Ledger, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ids = _history(autocommit_conn, ledger)

    assert ok(cli("jobs", "requeue", str(ids["dead"]))) == (
        f"requeued job {ids['dead']} on queue 'default'\n"
    )
    assert ledger.status(ids["dead"]) == "queued"
    assert refused(cli.inline("jobs", "requeue", str(ids["dead"]))) == (
        f"runledger: job {ids['dead']} is queued; only failed or cancelled jobs can be requeued\n"
    )
    assert refused(cli.inline("jobs", "requeue", str(ids["done"]))) == (
        f"runledger: job {ids['done']} cannot be requeued: it succeeded\n"
    )
    missing = uuid.uuid4()
    assert refused(cli.inline("jobs", "requeue", str(missing))) == f"runledger: no job {missing}\n"
