"""The NOTIFY channel names are spelled once, in ``runledger.postgres.channels`` (no database)."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import runledger
import runledger.postgres
from runledger.postgres import channels
from runledger.postgres.migrate import migrations

PACKAGE = Path(runledger.__file__).resolve().parent
# A channel name as a word of its own ("runledger_cancel_job", a savepoint, is not one).
SPELLED = re.compile(r"\b(?:" + "|".join(re.escape(name) for name in channels.ALL) + r")\b")
NOTIFIED = re.compile(r"pg_notify\(\s*'([^']*)'|\bnotify\s+(\w+)", re.IGNORECASE)


def test_the_channels_are_distinct_and_plain_identifiers() -> None:
    assert len(set(channels.ALL)) == len(channels.ALL) == 3
    for name in channels.ALL:
        assert re.fullmatch(r"[a-z_]+", name), name


def test_no_module_but_channels_spells_a_channel_name() -> None:
    spelled = {
        str(path.relative_to(PACKAGE)): SPELLED.findall(path.read_text("utf-8"))
        for path in PACKAGE.rglob("*.py")
        if path != PACKAGE / "postgres" / "channels.py"
    }

    assert {path: names for path, names in spelled.items() if names} == {}


def test_every_notifying_statement_uses_a_defined_channel() -> None:
    notified: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(runledger.postgres.__path__):
        module = importlib.import_module(f"runledger.postgres.{info.name}")
        for name, value in vars(module).items():
            if name.isupper() and isinstance(value, str):
                found = [a or b for a, b in NOTIFIED.findall(value)]
                if found:
                    notified[f"{info.name}.{name}"] = found

    # Enqueue, finishing attempts, cancels, requeues, schedules and workflows all notify.
    assert {"enqueue.INSERT_JOBS", "attempts.FINISH_ATTEMPTS", "workflow.NOTIFY_RUNS"} <= set(
        notified
    )
    assert {channel for found in notified.values() for channel in found} == set(channels.ALL)


def test_no_migration_notifies_on_a_channel_of_its_own() -> None:
    # The migrations are frozen SQL: a trigger that NOTIFYs would have to use these names.
    for migration in migrations():
        for first, second in NOTIFIED.findall(migration.sql):
            assert (first or second) in channels.ALL, migration.name


def test_the_old_public_names_are_the_channels() -> None:
    from runledger.postgres.cancellation import CANCEL_CHANNEL
    from runledger.postgres.workflow import RUNS_CHANNEL

    assert runledger.NOTIFY_CHANNEL == channels.JOBS
    assert CANCEL_CHANNEL == channels.CANCEL
    assert RUNS_CHANNEL == channels.RUNS
