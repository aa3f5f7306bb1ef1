"""The runledger settings of a Flask app, read from ``app.config``.

The runtime's options are the ``RUNLEDGER_*`` variables of ``runledger.runtime.config``
(``RUNTIME_VARIABLES``), read from the config by the same rules as from the environment.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import attrs

from runledger.contrib.flask._dsn import to_dsn
from runledger.core.limits import QueueLimits, parse_queue_limits
from runledger.errors import ConfigError
from runledger.runtime.config import RUNTIME_VARIABLES, RuntimeSettings, settings_from_env

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@attrs.frozen(kw_only=True)
class FlaskSettings(RuntimeSettings):
    """The runledger settings of one Flask app, read from its ``app.config``.

    The ``Runtime`` options are those of ``RuntimeSettings`` (``concurrency``, ``queues``,
    ``poll_interval``, ``lease_seconds``, ``listen``, ``shutdown_timeout``, ``prefetch``);
    None leaves the ``Runtime`` default, and ``runtime_kwargs()`` gives the ones set.

    Attributes:
        dsn: the libpq connection string of the database holding the ``runledger`` schema.
        run_in_process: start a runtime inside the web process (see ``Runledger``).
        queue_limits: ``RUNLEDGER_QUEUE_LIMITS``, the queue limits ``flask runledger
            migrate`` applies, by queue (empty when not set).
    """

    dsn: str
    run_in_process: bool = False
    queue_limits: Mapping[str, QueueLimits] = attrs.field(factory=dict)


def settings_from_config(config: Mapping[str, Any]) -> FlaskSettings:
    """Read the runledger settings from a Flask config (any mapping).

    The database is ``RUNLEDGER_DATABASE_URL`` (a libpq URL or ``key=value`` string), else
    ``SQLALCHEMY_DATABASE_URI`` turned into a libpq URL (see ``libpq_dsn``). Runtime options:
    every ``RUNLEDGER_*`` variable the runtime reads from the environment
    (``runledger.runtime.config.RUNTIME_VARIABLES``: ``RUNLEDGER_CONCURRENCY``,
    ``RUNLEDGER_QUEUES`` as a list or a comma-separated string, ``RUNLEDGER_POLL_INTERVAL``,
    ``RUNLEDGER_LEASE_SECONDS``, ``RUNLEDGER_LISTEN``, ``RUNLEDGER_SHUTDOWN_TIMEOUT``,
    ``RUNLEDGER_PREFETCH``, and the retention policy's ``RUNLEDGER_RETENTION``,
    ``RUNLEDGER_KEEP_SUCCEEDED``, ``RUNLEDGER_KEEP_FAILED``, ``RUNLEDGER_KEEP_CANCELLED``); and
    ``RUNLEDGER_RUN_IN_PROCESS``; and ``RUNLEDGER_QUEUE_LIMITS``, a mapping of queue names to
    their limits (``{"mail": {"concurrency": 5, "rate": 100, "per": 60}}``) that ``flask
    runledger migrate`` applies with ``apply_queue_limits``. Values may be native (``4``,
    ``["mail"]``, ``False``, ``timedelta(days=3)``) or strings as the environment gives them
    (``"4"``, ``"mail,default"``, ``"false"``). Reads nothing else and touches no database.

    Raises:
        ConfigError: no database URL, a URL that is not PostgreSQL, or an option that does
            not parse; the error names the config key.
        InvalidQueueLimit / BlankQueue: ``RUNLEDGER_QUEUE_LIMITS`` states an invalid limit.
    """
    env: dict[str, str] = {}
    for key in RUNTIME_VARIABLES:
        text = _config_text(key, config.get(key))
        if text is not None:
            env[key] = text
    runtime = settings_from_env(env)
    return FlaskSettings(
        **{**attrs.asdict(runtime, recurse=False), "dsn": _database_dsn(config)},
        run_in_process=_config_flag(config, "RUNLEDGER_RUN_IN_PROCESS"),
        queue_limits=_queue_limits(config),
    )


def _queue_limits(config: Mapping[str, Any]) -> dict[str, QueueLimits]:
    value = config.get("RUNLEDGER_QUEUE_LIMITS")
    if value is None:
        return {}
    return parse_queue_limits(value, name="RUNLEDGER_QUEUE_LIMITS")


def _database_dsn(config: Mapping[str, Any]) -> str:
    for name in ("RUNLEDGER_DATABASE_URL", "SQLALCHEMY_DATABASE_URI"):
        value = config.get(name)
        if value is not None and value != "":
            return to_dsn(name, value)
    raise ConfigError(
        name="RUNLEDGER_DATABASE_URL",
        value="",
        expected="the PostgreSQL database of the runledger schema "
        "(set RUNLEDGER_DATABASE_URL or SQLALCHEMY_DATABASE_URI in app.config)",
    )


def _config_text(name: str, value: object) -> str | None:
    """A config value as the environment would spell it, for ``settings_from_env``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.timedelta):  # RUNLEDGER_KEEP_*
        return f"{value.total_seconds():g}s"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return ",".join(value)
    raise ConfigError(
        name=name, value=repr(value), expected="a string, a number or a list of strings"
    )


def _config_flag(config: Mapping[str, Any], name: str) -> bool:
    text = _config_text(name, config.get(name))
    if text is None or text == "":
        return False
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(name=name, value=text, expected="true or false")
