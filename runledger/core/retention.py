"""How long finished jobs and workflow runs stay in the ledger: the retention policy.

A job or run is kept for the age of its terminal state, counted from ``finished_at``. Runs
map onto the same three states: ``succeeded`` runs keep as long as succeeded jobs,
``completed_with_errors`` runs as long as failed jobs (both hold dead letters), ``cancelled``
runs as long as cancelled jobs. A run's steps, step jobs, attempts and events go with it.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable
from typing import Any

import attrs

from runledger.core.errors import ConfigError
from runledger.core.status import JobStatus, RunStatus

KEEP_FOREVER = ("forever", "never", "none", "keep")
"""Spellings of "never delete" for one state in text settings."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
BUSY_SHARE = 0.025
"""The share of its time the pruner spends deleting while the queue has a backlog, unless told
otherwise."""

SEGMENT_LONGEST = datetime.timedelta(days=1)
"""The longest a segment of the events collects them before the next is opened."""
SEGMENT_SHORTEST = datetime.timedelta(minutes=1)
"""The shortest, for keeps of minutes: a segment costs a table, and a moment's lock to open
and to drop."""
SEGMENTS_PER_KEEP = 7
"""Segments in the shortest keep (a day each for the default week)."""

# The ledger's timestamps stop at year 294276; a longer keep means forever anyway.
_LONGEST = datetime.timedelta(days=100 * 365)


def _check_keep(
    name: str,
) -> Callable[[Any, attrs.Attribute[Any], datetime.timedelta | None], None]:
    def check(
        instance: Any, attribute: attrs.Attribute[Any], value: datetime.timedelta | None
    ) -> None:
        if value is None:
            return
        if not isinstance(value, datetime.timedelta):
            raise ConfigError(name=name, value=value, expected="a timedelta, or None to keep all")
        if value <= datetime.timedelta(0) or value > _LONGEST:
            raise ConfigError(
                name=name, value=value, expected="a positive timedelta of at most 100 years"
            )

    return check


def _check_share(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        raise ConfigError(
            name="retention.busy_share", value=value, expected="a number above 0, at most 1"
        )


@attrs.frozen(kw_only=True)
class Retention:
    """How long finished jobs and runs are kept, per terminal state; None keeps that state.

    The defaults keep an audit trail of a week for what went as planned and a month for dead
    letters, which someone usually has to look at, diagnose and requeue:

    - ``succeeded``: 7 days (jobs that succeeded, runs that succeeded);
    - ``failed``: 30 days (dead-lettered jobs, runs that completed with errors);
    - ``cancelled``: 7 days (cancelled jobs and runs).

    Pass ``retention=None`` to ``Runtime`` to keep everything. Attempts go with the job or run
    they describe, and so do events when a state is kept forever; otherwise events go with
    their segment of ``runledger.events`` (``segment_length``), up to a segment's length
    later. A job that belongs to a workflow run goes only with its run.

    ``busy_share`` is the share of its time the pruner may spend deleting while the queue has
    a backlog, its runtime's last claim having filled every free slot with jobs that waited
    more than a second past their due time (2.5 % by default, like autovacuum's cost-based
    delay: it pauses 39 times as long as each batch took). The saturated queue then keeps
    nearly all its speed, and the pruner catches up once the queue keeps up with its jobs,
    when it deletes without pausing; 1.0 never pauses.

    Raises:
        ConfigError: a keep that is not a positive ``timedelta`` (of at most 100 years), or a
            ``busy_share`` outside (0, 1].
    """

    succeeded: datetime.timedelta | None = attrs.field(
        default=datetime.timedelta(days=7), validator=_check_keep("retention.succeeded")
    )
    failed: datetime.timedelta | None = attrs.field(
        default=datetime.timedelta(days=30), validator=_check_keep("retention.failed")
    )
    cancelled: datetime.timedelta | None = attrs.field(
        default=datetime.timedelta(days=7), validator=_check_keep("retention.cancelled")
    )
    busy_share: float = attrs.field(default=BUSY_SHARE, validator=_check_share)

    def keeps(self) -> dict[JobStatus, datetime.timedelta]:
        """The terminal job states that are pruned, and how long each is kept."""
        found = {
            JobStatus.SUCCEEDED: self.succeeded,
            JobStatus.FAILED: self.failed,
            JobStatus.CANCELLED: self.cancelled,
        }
        return {status: keep for status, keep in found.items() if keep is not None}

    def segment_length(self) -> datetime.timedelta | None:
        """How long each segment of ``runledger.events`` collects events, or None when some
        state is kept forever.

        With every state pruned, a pruned job's events go with their segment, a period at a
        time (``runledger.postgres.segments``): a seventh of the shortest keep in whole
        minutes, between a minute and a day. A state kept forever would keep most events in
        every segment, so then the events go row by row with their job or run.
        """
        keeps = self.keeps()
        if len(keeps) < len(RUN_STATUS_OF):
            return None
        minutes = min(keeps.values()) // SEGMENTS_PER_KEEP // datetime.timedelta(minutes=1)
        return max(SEGMENT_SHORTEST, min(SEGMENT_LONGEST, datetime.timedelta(minutes=minutes)))

    def describe(self) -> str:
        """One line for logs: ``succeeded 7d, failed 30d, cancelled 7d``."""
        parts = []
        for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            keep = getattr(self, str(status))
            parts.append(f"{status} {'forever' if keep is None else format_duration(keep)}")
        return ", ".join(parts)


RUN_STATUS_OF: dict[JobStatus, RunStatus] = {
    JobStatus.SUCCEEDED: RunStatus.SUCCEEDED,
    JobStatus.FAILED: RunStatus.COMPLETED_WITH_ERRORS,
    JobStatus.CANCELLED: RunStatus.CANCELLED,
}
"""The finished run state that each job state's keep applies to."""


def parse_duration(name: str, text: str) -> datetime.timedelta:
    """A positive duration from text: ``90``, ``90s``, ``15m``, ``36h``, ``7d`` or ``2w``.

    Raises:
        ConfigError: the text is not such a duration, is zero, or is over 100 years.
    """
    expected = "a duration such as 3600, 90s, 15m, 36h, 7d or 2w"
    match = _DURATION.match(text.lower())
    if match is None:
        raise ConfigError(name=name, value=text, expected=expected)
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if not 0 < seconds <= _LONGEST.total_seconds() or math.isnan(seconds):
        raise ConfigError(name=name, value=text, expected=f"{expected}, above 0 and up to 100y")
    return datetime.timedelta(seconds=seconds)


def parse_keep(name: str, text: str) -> datetime.timedelta | None:
    """A duration as ``parse_duration`` reads it, or None for ``forever`` (``KEEP_FOREVER``).

    Raises:
        ConfigError: neither a duration nor a spelling of forever.
    """
    if text.strip().lower() in KEEP_FOREVER:
        return None
    return parse_duration(name, text)


def format_duration(value: datetime.timedelta) -> str:
    """The shortest exact spelling of ``value`` that ``parse_duration`` reads back."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):  # days, not weeks: settings and docs speak in days
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
