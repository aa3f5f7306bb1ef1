"""Runtime settings from ``RUNLEDGER_*`` variables: the environment, or any mapping of text.

``RUNTIME_VARIABLES`` is the one list of them; the Flask integration reads the same names
from ``app.config``, so a setting added here is a Flask setting too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from runledger.core.retention import Retention, parse_keep
from runledger.errors import ConfigError


@attrs.frozen(kw_only=True)
class RuntimeSettings:
    """The ``Runtime`` keyword arguments found in the environment (absent ones are None)."""

    dsn: str | None = None
    concurrency: int | None = None
    queues: tuple[str, ...] | None = None
    poll_interval: float | None = None
    lease_seconds: float | None = None
    listen: bool | None = None
    shutdown_timeout: float | None = None
    prefetch: int | None = None
    retention: Retention | None = None

    def runtime_kwargs(self) -> dict[str, Any]:
        """The settings that are set, as ``Runtime`` keyword arguments.

        Only ``RuntimeSettings``' own fields count: a subclass's additions are not ``Runtime``
        arguments.
        """
        values = {field.name: getattr(self, field.name) for field in attrs.fields(RuntimeSettings)}
        values.pop("dsn")
        return {k: v for k, v in values.items() if v is not None}


def _positive(kind: type[int] | type[float], expected: str) -> Callable[[str, str], Any]:
    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(name=name, value=raw, expected=expected) from None
        if not 0 < value < math.inf:  # also refuses nan
            raise ConfigError(name=name, value=raw, expected=expected)
        return value

    return parse


def _flag(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name=name, value=raw, expected="true or false")


def _queues(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(q.strip() for q in raw.split(",") if q.strip())
    if not names:
        raise ConfigError(name=name, value=raw, expected="comma-separated queue names")
    return names


def _prefetch(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(name=name, value=raw, expected="an integer >= 0")
    return value


# Each variable: the RuntimeSettings field (and Runtime argument) it sets, and its parser;
# read in this order, so the first bad one is the one reported.
_VARIABLES: Final[Mapping[str, tuple[str, Callable[[str, str], Any]]]] = {
    "RUNLEDGER_QUEUES": ("queues", _queues),
    "RUNLEDGER_CONCURRENCY": ("concurrency", _positive(int, "a positive integer")),
    "RUNLEDGER_POLL_INTERVAL": ("poll_interval", _positive(float, "positive seconds")),
    "RUNLEDGER_LEASE_SECONDS": ("lease_seconds", _positive(float, "positive seconds")),
    "RUNLEDGER_LISTEN": ("listen", _flag),
    "RUNLEDGER_SHUTDOWN_TIMEOUT": ("shutdown_timeout", _positive(float, "positive seconds")),
    "RUNLEDGER_PREFETCH": ("prefetch", _prefetch),
}

# The retention policy's variables, which build one Retention together: RUNLEDGER_RETENTION
# (off keeps everything; on or default starts from the defaults) and one keep per state.
_RETENTION_SWITCH = "RUNLEDGER_RETENTION"
_KEEP_VARIABLES: Final[Mapping[str, str]] = {
    "RUNLEDGER_KEEP_SUCCEEDED": "succeeded",
    "RUNLEDGER_KEEP_FAILED": "failed",
    "RUNLEDGER_KEEP_CANCELLED": "cancelled",
}

RUNTIME_VARIABLES: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{name: field for name, (field, _) in _VARIABLES.items()},
        _RETENTION_SWITCH: "retention",
        **{name: "retention" for name in _KEEP_VARIABLES},
    }
)
"""Every ``RUNLEDGER_*`` variable that sets a ``Runtime`` argument, and the argument it sets.

The database (``RUNLEDGER_DSN``, else ``DATABASE_URL``) is read beside them."""


def settings_from_env(env: Mapping[str, str] | None = None) -> RuntimeSettings:
    """Read ``RUNLEDGER_DSN`` (or ``DATABASE_URL``) and the ``RUNTIME_VARIABLES``.

    Those are ``RUNLEDGER_CONCURRENCY``, ``RUNLEDGER_QUEUES`` (comma-separated),
    ``RUNLEDGER_POLL_INTERVAL``, ``RUNLEDGER_LEASE_SECONDS``, ``RUNLEDGER_LISTEN``,
    ``RUNLEDGER_SHUTDOWN_TIMEOUT``, ``RUNLEDGER_PREFETCH``, and the retention policy's
    ``RUNLEDGER_RETENTION`` (``off`` keeps everything) and ``RUNLEDGER_KEEP_SUCCEEDED``,
    ``RUNLEDGER_KEEP_FAILED``, ``RUNLEDGER_KEEP_CANCELLED`` (``7d``, ``36h``, ``forever``;
    each replaces that state's default). ``env`` defaults to
    ``os.environ``; an empty value counts as unset.

    Raises:
        ConfigError: a value does not parse; the error names the variable.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (field, parse) in _VARIABLES.items():
        raw = env.get(name)
        if raw is not None and raw != "":
            values[field] = parse(name, raw)
    retention = _retention(env)
    if retention is not None:
        values["retention"] = retention
    return RuntimeSettings(
        dsn=env.get("RUNLEDGER_DSN") or env.get("DATABASE_URL") or None, **values
    )


def _retention(env: Mapping[str, str]) -> Retention | None:
    """The policy the retention variables give, or None when none is set.

    ``RUNLEDGER_RETENTION=off`` keeps everything (a policy with every keep None), and then
    no keep variable may be set; each ``RUNLEDGER_KEEP_*`` is a duration (``7d``) or
    ``forever`` and replaces that state's default.
    """
    switch = env.get(_RETENTION_SWITCH) or None
    # only the keep fields: Retention's others (batch_size, busy_share...) are not set here
    keeps: dict[str, Any] = {
        field: parse_keep(name, env[name])
        for name, field in _KEEP_VARIABLES.items()
        if env.get(name)
    }
    if switch is None and not keeps:
        return None
    if switch is not None:
        enabled = switch.strip().lower()
        if enabled in ("off", "false", "0", "no", "none"):
            if keeps:
                raise ConfigError(
                    name=_RETENTION_SWITCH,
                    value=switch,
                    expected="on, or no RUNLEDGER_KEEP_* variable beside off",
                )
            return Retention(succeeded=None, failed=None, cancelled=None)
        if enabled not in ("on", "true", "1", "yes", "default"):
            raise ConfigError(name=_RETENTION_SWITCH, value=switch, expected="on or off")
    return Retention(**keeps)
