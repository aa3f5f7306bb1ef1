"""``runledger runs list|show``: workflow runs, and a run's steps drawn as a dependency tree
with their statuses, attempts and durations."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from console import Cli, Ledger, ok, parse_fields, parse_table, parse_time, refused, split_sections

import runledger
from runledger import WorkflowBuilder

Conn = psycopg.Connection[Any]

# Every job step's job type is its key, so ledger.claim("validate") claims that step's job.
INVOICE = (
    WorkflowBuilder("invoice.process")
    .input({"invoice": 42})
    .step("fetch", job="fetch")
    .step("warmup", job="warmup")
    .step("validate", job="validate", after="fetch")
    .step("audit", job="audit", after="fetch")
    .step("charge", job="charge", after="validate")
    .step("notify", external=True, after=["charge", "audit"])
)


def _invoice_run(conn: Conn, ledger: Ledger) -> uuid.UUID:
    """fetch succeeded in 2.5 s; validate succeeded on its 2nd attempt, 75 s after the 1st
    started; audit failed, which cancelled notify; charge has been running for 3 hours;
    warmup is queued."""
    run_id = runledger.enqueue_workflow(conn, INVOICE.build())
    fetch = ledger.claim("fetch")
    ledger.succeed(fetch, {"amount": 10})
    ledger.backdate(fetch.id, 1, 2.5)
    validate = ledger.claim("validate")
    ledger.fail(validate, retry=True)
    ledger.succeed(ledger.claim("validate"))
    ledger.backdate(validate.id, 1, 75)
    ledger.fail(ledger.claim("audit"), retry=False, message="no audit trail")
    charge = ledger.claim("charge")
    ledger.backdate(charge.id, 1, 3 * 3600)
    return run_id


def _approval_run(conn: Conn, ledger: Ledger) -> uuid.UUID:
    """A run waiting on its external step ``approve`` (after ``ask`` succeeded)."""
    run_id = runledger.enqueue_workflow(
        conn,
        WorkflowBuilder("approval")
        .step("ask", job="ask")
        .step("approve", external=True, after="ask")
        .build(),
    )
    ledger.succeed(ledger.claim("ask"))
    return run_id


def _finished_run(conn: Conn, ledger: Ledger) -> uuid.UUID:
    """An ``invoice.process`` run of one succeeded step."""
    run_id = runledger.enqueue_workflow(
        conn, WorkflowBuilder("invoice.process").step("fetch", job="fetch").build()
    )
    ledger.succeed(ledger.claim("fetch"))
    return run_id


# --- list ------------------------------------------------------------------------------------


def test_runs_list_is_an_aligned_table_newest_first_and_filters(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    invoice = _invoice_run(autocommit_conn, ledger)
    approval = _approval_run(autocommit_conn, ledger)
    finished = _finished_run(autocommit_conn, ledger)

    rows = parse_table(ok(cli("runs", "list")))

    assert [(r["ID"], r["NAME"], r["STATUS"]) for r in rows] == [
        (str(finished), "invoice.process", "succeeded"),
        (str(approval), "approval", "waiting"),
        (str(invoice), "invoice.process", "running"),
    ]
    assert [r["STEPS DONE"] for r in rows] == ["1/1", "1/2", "4/6 (2 failed or cancelled)"]
    assert all(r["CREATED"].endswith(" ago") and r["DURATION"] for r in rows)

    def listed(*options: str) -> list[str]:
        return [row["ID"] for row in parse_table(ok(cli.inline("runs", "list", *options)))]

    assert listed("--status", "waiting") == [str(approval)]
    assert listed("--name", "invoice.process") == [str(finished), str(invoice)]
    assert listed("--name", "invoice.process", "--limit", "1") == [str(finished)]
    assert ok(cli.inline("runs", "list", "--name", "nope")) == "no workflow runs match\n"
    run_jobs = parse_table(ok(cli.inline("jobs", "list", "--run", str(approval))))
    assert [(r["TYPE"], r["STATUS"]) for r in run_jobs] == [("ask", "succeeded")]


def test_runs_list_json_has_ids_counts_and_times(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    invoice = _invoice_run(autocommit_conn, ledger)

    [run] = json.loads(ok(cli("runs", "list", "--json")))

    assert uuid.UUID(run["id"]) == invoice
    assert (run["name"], run["status"]) == ("invoice.process", "running")
    assert (run["steps_total"], run["steps_open"], run["steps_unsuccessful"]) == (6, 2, 2)
    parse_time(run["created_at"])
    assert run["finished_at"] is None


# --- show ------------------------------------------------------------------------------------


def test_runs_show_draws_the_steps_as_a_tree_with_status_attempts_and_durations(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    run_id = _invoice_run(autocommit_conn, ledger)

    header, steps = split_sections(ok(cli("runs", "show", str(run_id))))

    run = parse_fields(header)
    assert (run["run"], run["name"], run["status"]) == (str(run_id), "invoice.process", "running")
    assert run["input"] == '{"invoice": 42}'
    assert run["steps"].startswith("6 (")
    rows = parse_table(steps, tree=True)
    assert [r["STEP"] for r in rows] == [
        "fetch",
        "├─ validate",
        "│  └─ charge",
        "│     └─ notify (also after audit)",
        "└─ audit",
        "warmup",
    ]
    # The key is the label's last word before any "(also after ...)".
    shown = {r["STEP"].partition(" (")[0].split()[-1]: r for r in rows}
    assert [
        (key, shown[key]["STATUS"], shown[key]["ATTEMPTS"], shown[key]["DURATION"])
        for key in ("fetch", "validate", "charge", "notify", "warmup")
    ] == [
        ("fetch", "succeeded", "1/5", "2.5s"),
        ("validate", "succeeded", "2/5", "1m15s"),
        ("charge", "running", "1/5", "3h00m"),
        ("notify", "cancelled", "", ""),
        ("warmup", "queued", "0", ""),
    ]
    assert (shown["audit"]["STATUS"], shown["audit"]["ATTEMPTS"]) == ("failed", "1/5")
    assert shown["audit"]["DURATION"].endswith("ms")
    assert shown["audit"]["ERROR"] == "BoomError: no audit trail"
    assert shown["notify"]["TYPE"] == "(external)"
    assert shown["charge"]["TYPE"] == "charge"
    assert uuid.UUID(shown["charge"]["JOB"])


def test_runs_show_times_an_external_step_from_when_it_began_waiting(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    run_id = _approval_run(autocommit_conn, ledger)

    _, steps = split_sections(ok(cli.inline("runs", "show", str(run_id))))

    ask, approve = parse_table(steps, tree=True)
    assert (ask["STEP"], approve["STEP"]) == ("ask", "└─ approve")
    assert (approve["STATUS"], approve["ATTEMPTS"], approve["TYPE"]) == (
        "waiting",
        "",
        "(external)",
    )
    assert approve["DURATION"] != ""


def test_runs_show_json_has_the_steps_with_prerequisites_jobs_and_durations(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    run_id = _invoice_run(autocommit_conn, ledger)

    run = json.loads(ok(cli("runs", "show", "--json", str(run_id))))

    assert (run["id"], run["status"], run["input"]) == (str(run_id), "running", {"invoice": 42})
    steps = {step["step_key"]: step for step in run["steps"]}
    assert list(steps) == ["fetch", "warmup", "validate", "audit", "charge", "notify"]
    assert steps["notify"]["after"] == ["audit", "charge"]
    assert steps["notify"]["job"] is None
    assert steps["fetch"]["duration_seconds"] == 2.5
    assert steps["fetch"]["output"] == {"amount": 10}
    assert steps["validate"]["job"]["attempt"] == 2
    assert steps["validate"]["job"]["status"] == "succeeded"
    assert uuid.UUID(steps["validate"]["job"]["id"]) == uuid.UUID(steps["validate"]["job_id"])
    assert steps["warmup"]["duration_seconds"] is None
    assert parse_time(steps["charge"]["started_at"]) < parse_time(run["created_at"])
    assert {(e["step_key"], e["prerequisite_key"], e["release_mode"]) for e in run["edges"]} == {
        ("validate", "fetch", "on_success"),
        ("audit", "fetch", "on_success"),
        ("charge", "validate", "on_success"),
        ("notify", "charge", "on_success"),
        ("notify", "audit", "on_success"),
    }


def test_runs_show_of_an_unknown_run_exits_1(cli: Cli) -> None:
    missing = uuid.uuid4()

    assert refused(cli("runs", "show", str(missing))) == f"runledger: no workflow run {missing}\n"


def test_runs_retry_runs_a_failed_run_again_and_refuses_the_others(
    cli: Cli, ledger: Ledger, autocommit_conn: Conn
) -> None:
    failed = runledger.enqueue_workflow(
        autocommit_conn,
        WorkflowBuilder("retry.cli")
        .step("load", job="load")
        .step("send", job="send", after="load")
        .step("report", job="report", after="send")
        .build(),
    )
    ledger.succeed(ledger.claim("load"), {"rows": 3})
    ledger.fail(ledger.claim("send"), retry=False)
    approval = _approval_run(autocommit_conn, ledger)

    assert ok(cli("runs", "retry", str(failed))) == (
        f"retried workflow run {failed} (running); queued: send; blocked: report\n"
    )
    run = runledger.get_workflow_run(autocommit_conn, failed)
    assert {s.step_key: str(s.status) for s in run.steps} == {
        "load": "succeeded", "send": "queued", "report": "blocked",
    }  # fmt: skip
    assert refused(cli.inline("runs", "retry", str(failed))) == (
        f"runledger: workflow run {failed} cannot be retried: it is still running; wait for it "
        "to finish, or cancel it first\n"
    )
    assert refused(cli.inline("runs", "retry", str(approval))).startswith(
        f"runledger: workflow run {approval} cannot be retried: it is still waiting"
    )
    missing = uuid.uuid4()
    assert refused(cli.inline("runs", "retry", str(missing))) == (
        f"runledger: no workflow run {missing}\n"
    )
    usage = refused(cli.inline("runs", "retry", "not-an-id"), code=2)
    assert "'not-an-id' is not a workflow run id (a UUID)" in usage
