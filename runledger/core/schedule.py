"""Cron schedules: the validated spec and the pure maths of their ticks."""

from __future__ import annotations

import datetime
import zoneinfo

import attrs
from croniter import CroniterBadDateError, CroniterError, croniter

from runledger.core import job as jobopts
from runledger.core.errors import InvalidCron, UnknownTimezone
from runledger.core.payload import JsonValue, check_json


def zone(name: str | None, timezone: str) -> zoneinfo.ZoneInfo:
    """The ``ZoneInfo`` for ``timezone``; raises ``UnknownTimezone`` naming the schedule."""
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise UnknownTimezone(name="" if name is None else name, timezone=timezone) from None


FIELDS = "minute hour day-of-month month day-of-week"
REFERENCE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
"""Where ``check_ticks`` looks for ticks: a fixed moment, so that validation never depends on
the clock. croniter looks up to 50 years either way, longer than any gap between two ticks of
an expression that fires at all (a leap day on a given weekday recurs within 40 years)."""
NEVER_FIRES = (
    "it can never fire: no date matches its day of month, month and day of week "
    "(February has at most 29 days; April, June, September and November have 30)"
)
_CRONITER_ERRORS = (CroniterError, ValueError, KeyError, IndexError, TypeError, OverflowError)
"""What croniter raises on input it refuses: its own errors, and builtins on odd input."""


def check_cron(name: str | None, cron: str) -> None:
    """Raise ``InvalidCron`` unless ``cron`` is a 5-field cron expression croniter parses.

    Parsing is not enough to fire: see ``check_ticks`` for expressions that match no date.
    """
    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise InvalidCron(name=name, cron=str(cron), reason=f"expected 5 fields ({FIELDS})")
    try:
        croniter(cron)
    except _CRONITER_ERRORS as err:
        raise InvalidCron(name=name, cron=cron, reason=f"croniter cannot parse it: {err}") from None


def check_ticks(name: str | None, cron: str, timezone: str) -> None:
    """Raise ``InvalidCron`` unless ``cron`` parses and has ticks around ``REFERENCE``.

    Catches the expressions that parse but match no date, such as ``0 0 30 2 *``: croniter
    accepts them and then fails to find a tick. Pure and deterministic; takes milliseconds.
    Raises ``UnknownTimezone`` for an unknown ``timezone``.
    """
    check_cron(name, cron)
    next_tick(cron, timezone, REFERENCE, name=name)
    latest_tick(cron, timezone, REFERENCE, name=name)


def _second_pass(tick: datetime.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    """True if ``tick`` is the second occurrence of an ambiguous local time (clocks went back)."""
    local = tick.astimezone(tz)
    first = local.replace(fold=0).astimezone(datetime.UTC)
    second = local.replace(fold=1).astimezone(datetime.UTC)
    return first != second and tick == second


def _fixed_hour(cron: str) -> bool:
    return "*" not in cron.split()[1]


def _refused(name: str | None, cron: str, err: Exception) -> InvalidCron:
    if isinstance(err, CroniterBadDateError):
        return InvalidCron(name=name, cron=cron, reason=NEVER_FIRES)
    return InvalidCron(name=name, cron=cron, reason=f"croniter cannot use it: {err}")


def next_tick(
    cron: str, timezone: str, after: datetime.datetime, *, name: str | None = None
) -> datetime.datetime:
    """The first tick of ``cron`` in ``timezone`` strictly after ``after`` (aware), in UTC.

    Like cron(8), a schedule with a fixed hour fires once when clocks go back and its time
    happens twice (at the first pass); schedules with a wildcard hour fire in both passes.

    Raises:
        InvalidCron: croniter refuses ``cron`` or finds no tick (it can never fire); the
            error names the schedule ``name``, as do the others.
        UnknownTimezone: ``timezone`` is not in the zoneinfo database.
    """
    tz = zone(name, timezone)
    try:
        ticks = croniter(cron, after.astimezone(tz))
        fixed = _fixed_hour(cron)
        while True:
            tick: datetime.datetime = ticks.get_next(datetime.datetime).astimezone(datetime.UTC)
            if tick <= after or (fixed and _second_pass(tick, tz)):
                continue
            return tick
    except _CRONITER_ERRORS as err:
        raise _refused(name, cron, err) from None


def latest_tick(
    cron: str, timezone: str, at: datetime.datetime, *, name: str | None = None
) -> datetime.datetime:
    """The last tick of ``cron`` at or before ``at``, in UTC (missed ticks coalesce to it).

    croniter walks back on the local wall clock, which in a repeated autumn hour can land on
    an earlier tick; walking forward with ``next_tick`` from there corrects it.

    Raises:
        InvalidCron / UnknownTimezone: as ``next_tick``.
    """
    tz = zone(name, timezone)
    try:
        back = croniter(cron, at.astimezone(tz) + datetime.timedelta(microseconds=1))
        guess: datetime.datetime = back.get_prev(datetime.datetime).astimezone(datetime.UTC)
        if guess > at:  # never seen, but a guess after ``at`` would loop forever below
            earlier = croniter(cron, (at - datetime.timedelta(days=2)).astimezone(tz))
            guess = earlier.get_prev(datetime.datetime).astimezone(datetime.UTC)
    except _CRONITER_ERRORS as err:
        raise _refused(name, cron, err) from None
    while True:
        following = next_tick(cron, timezone, guess, name=name)
        if following > at:
            return guess
        guess = following


@attrs.frozen(kw_only=True)
class ScheduleSpec:
    """A cron schedule: every tick of ``cron`` in ``timezone`` enqueues one job."""

    name: str
    cron: str
    job_type: str
    payload: JsonValue = None
    timezone: str = "UTC"
    queue: str | None = None
    priority: int = jobopts.DEFAULT_PRIORITY
    max_attempts: int | None = None
    timeout_seconds: int | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidCron(name=str(self.name), cron=str(self.cron), reason="blank name")
        jobopts.check_text("schedule", self.name)
        check_cron(self.name, self.cron)
        zone(self.name, self.timezone)
        check_ticks(self.name, self.cron, self.timezone)
        jobopts.check_job_type(self.job_type)
        check_json(self.payload)
        if self.queue is not None:
            jobopts.check_queue(self.queue)
        jobopts.check_priority(self.priority)
        jobopts.check_max_attempts(self.max_attempts)
        jobopts.check_timeout(self.timeout_seconds)
