"""``runledger prune``: a dry run counts and deletes nothing; a run deletes what is old enough
in the states asked for; bad ages are usage errors."""

from __future__ import annotations

import json
import uuid

from console import Cli, Ledger, ok, parse_table, refused

import runledger

DAY = 86_400.0


def finished_history(ledger: Ledger) -> dict[str, uuid.UUID]:
    """An old succeeded, an old failed, a young succeeded and a queued job."""
    jobs = {}
    for name, fail, days in (("old_ok", False, 10), ("old_bad", True, 40), ("young_ok", False, 1)):
        jobs[name] = runledger.enqueue(ledger.conn, "cli.prune")
        claimed = ledger.claim("cli.prune")
        if fail:
            ledger.fail(claimed, retry=False)
        else:
            ledger.succeed(claimed)
        ledger.age_job(jobs[name], days * DAY)
    jobs["queued"] = runledger.enqueue(ledger.conn, "cli.prune")
    return jobs


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(cli: Cli, ledger: Ledger) -> None:
    jobs = finished_history(ledger)

    out = ok(cli("prune", "--older-than", "7d", "--dry-run"))

    assert out.splitlines()[0] == "would delete what finished more than 7d ago:"
    rows = {row["STATUS"]: row for row in parse_table("\n".join(out.splitlines()[1:]))}
    assert rows["succeeded"]["JOBS"] == "1"
    assert rows["succeeded"]["ATTEMPTS"] == "1"
    assert rows["succeeded"]["EVENTS"] == "3"
    assert rows["failed"]["JOBS"] == "1"
    assert rows["cancelled"]["JOBS"] == "0"
    assert all(ledger.status(job) for job in jobs.values())  # every job still there


def test_prune_deletes_only_the_states_asked_for_and_old_enough(cli: Cli, ledger: Ledger) -> None:
    jobs = finished_history(ledger)

    report = json.loads(ok(cli("prune", "--older-than", "7d", "--status", "succeeded", "--json")))

    assert report["statuses"] == {
        "succeeded": {"jobs": 1, "runs": 0, "run_jobs": 0, "attempts": 1, "events": 3}
    }
    assert report["dry_run"] is False
    remaining = ledger.conn.execute("select id from runledger.jobs").fetchall()
    assert {row[0] for row in remaining} == {jobs["old_bad"], jobs["young_ok"], jobs["queued"]}

    ok(cli("prune", "--older-than", "30d"))
    remaining = ledger.conn.execute("select id from runledger.jobs").fetchall()
    assert {row[0] for row in remaining} == {jobs["young_ok"], jobs["queued"]}


def test_bad_ages_and_states_are_usage_errors(cli: Cli) -> None:
    for args in (
        ["--older-than", "7 days"],
        ["--older-than", "0"],
        ["--older-than", "7d", "--status", "queued"],
        [],
    ):
        result = cli("prune", *args)
        assert result.returncode == 2, (args, result.stderr)


def test_worker_keep_options_are_checked_before_anything_starts(cli: Cli) -> None:
    result = cli("worker", "--app", "nowhere:registry", "--keep-failed", "a week")
    assert "--keep-failed" in refused(result)
    result = cli("worker", "--app", "nowhere:registry", "--no-retention", "--keep-failed", "3d")
    assert "--no-retention" in refused(result)
