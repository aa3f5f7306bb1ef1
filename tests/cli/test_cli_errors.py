"""What every command does when it cannot do its job: a bad DSN, an unreachable server, a
schema that is not migrated, no DSN at all, or a malformed command line. One line on stderr,
no traceback, exit code 1 (2 for usage)."""

from __future__ import annotations

import importlib.metadata
import uuid

from console import Cli, ok, refused

import runledger.cli

UNREACHABLE = "postgresql://runledger@127.0.0.1:1/nowhere?connect_timeout=5"
NOWHERE = Cli(dsn="")  # for the commands that fail before using a database

# One command of each family, reads and writes.
COMMANDS = [
    ["status"],
    ["jobs", "list"],
    ["jobs", "show", str(uuid.UUID(int=1))],
    ["jobs", "cancel", str(uuid.UUID(int=1))],
    ["jobs", "requeue", str(uuid.UUID(int=1))],
    ["runs", "list"],
    ["runs", "show", str(uuid.UUID(int=1))],
    ["schedules", "list"],
    ["schedules", "pause", "nightly"],
    ["events", "--job", str(uuid.UUID(int=1))],
    ["events", "--queue", "mail"],
    ["queues", "list"],
    ["queues", "limit", "mail", "--concurrency", "2"],
    ["queues", "pause", "mail"],
    ["queues", "resume", "mail"],
]


def test_a_malformed_dsn_exits_1_saying_the_dsn_is_invalid() -> None:
    result = NOWHERE.bare("jobs", "list", "--dsn", "not a dsn")

    err = refused(result)
    assert err.startswith("runledger: invalid DSN: ")
    assert err.count("\n") == 1
    assert result.stdout == ""


def test_an_unreachable_server_exits_1_saying_it_cannot_connect() -> None:
    err = refused(NOWHERE.bare("runs", "list", "--dsn", UNREACHABLE))

    assert err.startswith("runledger: cannot connect to the database: ")
    assert err.count("\n") == 1


def test_every_command_on_an_unmigrated_database_says_to_run_migrate(
    empty_database: str,
) -> None:
    unmigrated = Cli(empty_database)

    first = unmigrated(*COMMANDS[0])
    assert "run `runledger migrate" in refused(first)
    assert first.stdout == ""
    for command in COMMANDS[1:]:
        result = unmigrated.inline(*command)
        assert "run `runledger migrate" in refused(result), command
        assert result.stdout == "", command


def test_no_dsn_exits_1_saying_how_to_give_one() -> None:
    err = refused(NOWHERE.bare("jobs", "list"))

    assert "pass --dsn or set RUNLEDGER_DSN or DATABASE_URL" in err


def test_the_dsn_may_come_before_or_after_the_command_or_from_database_url(cli: Cli) -> None:
    assert ok(cli.bare("--dsn", cli.dsn, "jobs", "list")) == "no jobs match\n"
    assert ok(cli.bare("schedules", "list", "--dsn", cli.dsn)) == "no schedules\n"
    assert ok(cli.bare("runs", "list", env={"DATABASE_URL": cli.dsn})) == (
        "no workflow runs match\n"
    )


def test_a_command_without_its_action_or_with_a_bad_option_is_a_usage_error(cli: Cli) -> None:
    assert "usage: runledger jobs" in refused(cli("jobs"), code=2)
    assert "usage: runledger" in refused(cli.inline(), code=2)
    assert "invalid choice: 'explode'" in refused(cli.inline("runs", "explode"), code=2)
    assert "must be at least 1" in refused(cli.inline("jobs", "list", "--limit", "0"), code=2)
    assert "not a whole number" in refused(cli.inline("runs", "list", "--limit", "x"), code=2)
    assert "is not a workflow run id" in refused(cli.inline("runs", "show", "x"), code=2)


def test_the_console_script_is_runledger_cli_main() -> None:
    [script] = importlib.metadata.entry_points(group="console_scripts", name="runledger")

    assert script.value == "runledger.cli:main"
    assert script.load() is runledger.cli.main
