"""Runtime settings from ``RUNLEDGER_*`` environment variables."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

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

    def runtime_kwargs(self) -> dict[str, Any]:
        """The settings that are set, as ``Runtime`` keyword arguments."""
        values = attrs.asdict(self)
        values.pop("dsn")
        return {k: v for k, v in values.items() if v is not None}


def _parse(env: Mapping[str, str], name: str, kind: type, expected: str) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        value = kind(raw)
    except ValueError:
        raise ConfigError(name=name, value=raw, expected=expected) from None
    if kind in (int, float) and not 0 < value < math.inf:  # also refuses nan
        raise ConfigError(name=name, value=raw, expected=expected)
    return value


def _parse_prefetch(env: Mapping[str, str]) -> int | None:
    raw = env.get("RUNLEDGER_PREFETCH")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(name="RUNLEDGER_PREFETCH", value=raw, expected="an integer >= 0")
    return value


def settings_from_env(env: Mapping[str, str] | None = None) -> RuntimeSettings:
    """Read ``RUNLEDGER_DSN`` (or ``DATABASE_URL``), ``RUNLEDGER_CONCURRENCY``,
    ``RUNLEDGER_QUEUES`` (comma-separated), ``RUNLEDGER_POLL_INTERVAL``,
    ``RUNLEDGER_LEASE_SECONDS``, ``RUNLEDGER_LISTEN``, ``RUNLEDGER_SHUTDOWN_TIMEOUT`` and
    ``RUNLEDGER_PREFETCH``.

    Raises:
        ConfigError: a value does not parse; the error names the variable.
    """
    env = os.environ if env is None else env
    queues = env.get("RUNLEDGER_QUEUES")
    parsed_queues = None
    if queues is not None and queues != "":
        parsed_queues = tuple(q.strip() for q in queues.split(",") if q.strip())
        if not parsed_queues:
            raise ConfigError(
                name="RUNLEDGER_QUEUES", value=queues, expected="comma-separated queue names"
            )
    return RuntimeSettings(
        dsn=env.get("RUNLEDGER_DSN") or env.get("DATABASE_URL") or None,
        concurrency=_parse(env, "RUNLEDGER_CONCURRENCY", int, "a positive integer"),
        queues=parsed_queues,
        poll_interval=_parse(env, "RUNLEDGER_POLL_INTERVAL", float, "positive seconds"),
        lease_seconds=_parse(env, "RUNLEDGER_LEASE_SECONDS", float, "positive seconds"),
        listen=_parse(env, "RUNLEDGER_LISTEN", bool, "true or false"),
        shutdown_timeout=_parse(env, "RUNLEDGER_SHUTDOWN_TIMEOUT", float, "positive seconds"),
        prefetch=_parse_prefetch(env),
    )
