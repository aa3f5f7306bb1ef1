"""The retention policy as a value, as text settings, and as Runtime and Flask settings."""

from __future__ import annotations

import datetime

import pytest

import runledger
from runledger import JobStatus, Retention
from runledger.contrib.flask._settings import settings_from_config
from runledger.core.retention import format_duration, parse_duration, parse_keep
from runledger.errors import ConfigError
from runledger.runtime.config import RUNTIME_VARIABLES, settings_from_env

DAY = datetime.timedelta(days=1)


def test_the_default_keeps_a_week_and_dead_letters_a_month() -> None:
    assert Retention().keeps() == {
        JobStatus.SUCCEEDED: 7 * DAY,
        JobStatus.FAILED: 30 * DAY,
        JobStatus.CANCELLED: 7 * DAY,
    }
    assert Retention().describe() == "succeeded 7d, failed 30d, cancelled 7d"
    assert Retention(failed=None).keeps().keys() == {JobStatus.SUCCEEDED, JobStatus.CANCELLED}


@pytest.mark.parametrize("bad", [datetime.timedelta(0), -DAY, 200 * 365 * DAY, 7, "7d"])
def test_a_keep_that_is_not_a_positive_timedelta_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Retention(succeeded=bad)  # type: ignore[arg-type]
    assert caught.value.name == "retention.succeeded"


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, float("nan"), float("inf"), True, "0.1"])
def test_a_busy_share_outside_zero_to_one_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        Retention(busy_share=bad)  # type: ignore[arg-type]
    assert caught.value.name == "retention.busy_share"


def test_the_pruner_takes_a_tenth_of_its_time_while_jobs_run_unless_told() -> None:
    assert Retention().busy_share == 0.025
    assert Retention(busy_share=1).busy_share == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("36h", 129_600), ("7d", 604_800), ("2W", 1_209_600),
     (" 1.5h ", 5_400)],
)  # fmt: skip
def test_durations_read_as_written(text: str, seconds: int) -> None:
    assert parse_duration("X", text) == datetime.timedelta(seconds=seconds)
    assert (
        parse_duration("X", format_duration(parse_duration("X", text))).total_seconds() == seconds
    )


@pytest.mark.parametrize("text", ["", "0", "0d", "7 days", "-1d", "1y", "nan", "101w" * 2, "d"])
def test_a_bad_duration_names_its_setting(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration("RUNLEDGER_KEEP_FAILED", text)
    assert caught.value.name == "RUNLEDGER_KEEP_FAILED"
    assert caught.value.value == text


def test_forever_is_a_keep_of_none() -> None:
    assert parse_keep("X", "forever") is None
    assert parse_keep("X", "Never") is None
    assert parse_keep("X", "3d") == 3 * DAY


def test_the_environment_sets_each_keep_over_the_defaults() -> None:
    settings = settings_from_env({"RUNLEDGER_KEEP_FAILED": "90d", "RUNLEDGER_KEEP_SUCCEEDED": "1d"})
    assert settings.retention == Retention(succeeded=DAY, failed=90 * DAY)
    assert settings.runtime_kwargs()["retention"] == settings.retention
    assert settings_from_env({}).retention is None  # unset: the Runtime's default applies
    assert settings_from_env({"RUNLEDGER_RETENTION": "on"}).retention == Retention()


def test_retention_off_keeps_everything_and_refuses_keeps_beside_it() -> None:
    off = settings_from_env({"RUNLEDGER_RETENTION": "off"}).retention
    assert off is not None
    assert off.keeps() == {}
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"RUNLEDGER_RETENTION": "off", "RUNLEDGER_KEEP_FAILED": "3d"})
    assert caught.value.name == "RUNLEDGER_RETENTION"
    with pytest.raises(ConfigError):
        settings_from_env({"RUNLEDGER_RETENTION": "sometimes"})


def test_the_retention_variables_are_runtime_variables() -> None:
    for name in (
        "RUNLEDGER_RETENTION",
        "RUNLEDGER_KEEP_SUCCEEDED",
        "RUNLEDGER_KEEP_FAILED",
        "RUNLEDGER_KEEP_CANCELLED",
    ):
        assert RUNTIME_VARIABLES[name] == "retention"


def test_flask_config_takes_timedeltas_and_text() -> None:
    settings = settings_from_config(
        {
            "RUNLEDGER_DATABASE_URL": "postgresql://localhost/app",
            "RUNLEDGER_KEEP_SUCCEEDED": datetime.timedelta(hours=12),
            "RUNLEDGER_KEEP_CANCELLED": "forever",
        }
    )
    assert settings.retention == Retention(
        succeeded=12 * datetime.timedelta(hours=1), cancelled=None
    )


def test_a_runtime_without_any_keep_runs_no_pruner() -> None:
    registry = runledger.Registry()
    dsn = "host=127.0.0.1 port=1 connect_timeout=1"  # never connected: nothing is started
    assert runledger.Runtime(dsn, registry, retention=None).pruner is None
    off = Retention(succeeded=None, failed=None, cancelled=None)
    assert runledger.Runtime(dsn, registry, retention=off).pruner is None
    assert runledger.Runtime(dsn, registry).retention == Retention()
    with pytest.raises(ConfigError) as caught:
        runledger.Runtime(dsn, registry, retention=7)  # type: ignore[arg-type]
    assert caught.value.name == "retention"


def test_a_segment_of_the_events_is_a_seventh_of_the_shortest_keep_from_a_minute_to_a_day() -> None:
    day = datetime.timedelta(days=1)
    assert Retention().segment_length() == day  # a week's keep: a day
    assert Retention(cancelled=datetime.timedelta(days=1)).segment_length() == (
        datetime.timedelta(minutes=205)  # 1,440 / 7, in whole minutes
    )
    assert Retention(succeeded=datetime.timedelta(seconds=120)).segment_length() == (
        datetime.timedelta(minutes=1)
    )
    assert Retention(succeeded=datetime.timedelta(days=70)).segment_length() == day


def test_no_segments_when_a_state_is_kept_forever() -> None:
    assert Retention(failed=None).segment_length() is None
    assert Retention(succeeded=None, failed=None, cancelled=None).segment_length() is None
