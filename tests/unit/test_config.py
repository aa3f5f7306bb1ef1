"""Runtime settings from RUNLEDGER_* environment variables (no database)."""

from __future__ import annotations

import pytest

from runledger.errors import ConfigError
from runledger.runtime.config import RuntimeSettings, settings_from_env


def test_empty_environment_gives_no_settings_and_no_runtime_kwargs() -> None:
    settings = settings_from_env({})

    assert settings == RuntimeSettings()
    assert settings.runtime_kwargs() == {}


def test_runledger_dsn_is_read() -> None:
    assert settings_from_env({"RUNLEDGER_DSN": "postgresql://a/b"}).dsn == "postgresql://a/b"


def test_database_url_is_the_fallback_dsn() -> None:
    assert settings_from_env({"DATABASE_URL": "postgresql://x/y"}).dsn == "postgresql://x/y"


def test_runledger_dsn_wins_over_database_url() -> None:
    env = {"RUNLEDGER_DSN": "postgresql://a/b", "DATABASE_URL": "postgresql://x/y"}

    assert settings_from_env(env).dsn == "postgresql://a/b"


def test_empty_runledger_dsn_falls_back_to_database_url() -> None:
    env = {"RUNLEDGER_DSN": "", "DATABASE_URL": "postgresql://x/y"}

    assert settings_from_env(env).dsn == "postgresql://x/y"


def test_every_variable_is_parsed_into_runtime_kwargs() -> None:
    env = {
        "RUNLEDGER_DSN": "postgresql://a/b",
        "RUNLEDGER_CONCURRENCY": "12",
        "RUNLEDGER_QUEUES": "a, b",
        "RUNLEDGER_POLL_INTERVAL": "0.25",
        "RUNLEDGER_LEASE_SECONDS": "45",
        "RUNLEDGER_LISTEN": "false",
        "RUNLEDGER_SHUTDOWN_TIMEOUT": "7.5",
    }

    settings = settings_from_env(env)

    assert settings.dsn == "postgresql://a/b"
    assert settings.runtime_kwargs() == {
        "concurrency": 12,
        "queues": ("a", "b"),
        "poll_interval": 0.25,
        "lease_seconds": 45.0,
        "listen": False,
        "shutdown_timeout": 7.5,
    }
    assert isinstance(settings.concurrency, int)
    assert isinstance(settings.lease_seconds, float)


def test_queues_are_split_on_commas_and_stripped() -> None:
    assert settings_from_env({"RUNLEDGER_QUEUES": " mail ,default,,reports "}).queues == (
        "mail",
        "default",
        "reports",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        (" on ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_listen_parses_booleans(raw: str, expected: bool) -> None:
    assert settings_from_env({"RUNLEDGER_LISTEN": raw}).listen is expected


def test_empty_values_count_as_unset() -> None:
    env = {
        "RUNLEDGER_CONCURRENCY": "",
        "RUNLEDGER_POLL_INTERVAL": "",
        "RUNLEDGER_LEASE_SECONDS": "",
        "RUNLEDGER_LISTEN": "",
    }

    assert settings_from_env(env).runtime_kwargs() == {}


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("RUNLEDGER_CONCURRENCY", "abc"),
        ("RUNLEDGER_CONCURRENCY", "0"),
        ("RUNLEDGER_CONCURRENCY", "-1"),
        ("RUNLEDGER_CONCURRENCY", "1.5"),
        ("RUNLEDGER_POLL_INTERVAL", "abc"),
        ("RUNLEDGER_POLL_INTERVAL", "0"),
        ("RUNLEDGER_POLL_INTERVAL", "-1"),
        ("RUNLEDGER_LEASE_SECONDS", "abc"),
        ("RUNLEDGER_LEASE_SECONDS", "0"),
        ("RUNLEDGER_LEASE_SECONDS", "-1"),
        ("RUNLEDGER_SHUTDOWN_TIMEOUT", "soon"),
        ("RUNLEDGER_LISTEN", "maybe"),
        ("RUNLEDGER_LISTEN", "2"),
    ],
)
def test_bad_value_raises_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({name: raw})

    assert caught.value.name == name
    assert caught.value.value == raw
    assert name in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("RUNLEDGER_POLL_INTERVAL", "nan"),
        ("RUNLEDGER_LEASE_SECONDS", "inf"),
        ("RUNLEDGER_SHUTDOWN_TIMEOUT", "nan"),
    ],
)
def test_non_finite_seconds_raise_config_error(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({name: raw})

    assert caught.value.name == name


@pytest.mark.parametrize("raw", [",", " , ", ",,,"])
def test_queues_without_any_name_raise_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_env({"RUNLEDGER_QUEUES": raw})

    assert caught.value.name == "RUNLEDGER_QUEUES"


def test_settings_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLEDGER_CONCURRENCY", "3")
    monkeypatch.setenv("RUNLEDGER_QUEUES", "x")

    settings = settings_from_env()

    assert settings.concurrency == 3
    assert settings.queues == ("x",)


def test_prefetch_is_read_and_must_be_a_non_negative_integer() -> None:
    from runledger.errors import ConfigError
    from runledger.runtime.config import settings_from_env

    assert settings_from_env({"RUNLEDGER_PREFETCH": "0"}).prefetch == 0
    assert settings_from_env({"RUNLEDGER_PREFETCH": "12"}).runtime_kwargs()["prefetch"] == 12
    for bad in ("-1", "x"):
        with pytest.raises(ConfigError) as caught:
            settings_from_env({"RUNLEDGER_PREFETCH": bad})
        assert caught.value.name == "RUNLEDGER_PREFETCH"
