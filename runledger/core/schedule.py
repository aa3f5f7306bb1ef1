"""Cron schedules: the validated spec and the pure maths of their ticks."""

from __future__ import annotations

import datetime
import zoneinfo

import attrs
from croniter import croniter

from runledger.core import job as jobopts
from runledger.core.errors import InvalidCron, UnknownTimezone
from runledger.core.payload import JsonValue, check_json


def zone(name: str, timezone: str) -> zoneinfo.ZoneInfo:
    """The ``ZoneInfo`` for ``timezone``; raises ``UnknownTimezone`` naming the schedule."""
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise UnknownTimezone(name=name, timezone=timezone) from None


def check_cron(name: str, cron: str) -> None:
    """Raise ``InvalidCron`` unless ``cron`` is a 5-field cron expression croniter accepts."""
    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise InvalidCron(name=name, cron=str(cron), reason="expected 5 fields (m h dom mon dow)")
    if not croniter.is_valid(cron):
        raise InvalidCron(name=name, cron=cron, reason="croniter cannot parse it")


def _second_pass(tick: datetime.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    """True if ``tick`` is the second occurrence of an ambiguous local time (clocks went back)."""
    local = tick.astimezone(tz)
    first = local.replace(fold=0).astimezone(datetime.UTC)
    second = local.replace(fold=1).astimezone(datetime.UTC)
    return first != second and tick == second


def _fixed_hour(cron: str) -> bool:
    return "*" not in cron.split()[1]


def next_tick(cron: str, timezone: str, after: datetime.datetime) -> datetime.datetime:
    """The first tick of ``cron`` in ``timezone`` strictly after ``after`` (aware), in UTC.

    Like cron(8), a schedule with a fixed hour fires once when clocks go back and its time
    happens twice (at the first pass); schedules with a wildcard hour fire in both passes.
    """
    tz = zoneinfo.ZoneInfo(timezone)
    ticks = croniter(cron, after.astimezone(tz))
    fixed = _fixed_hour(cron)
    while True:
        tick: datetime.datetime = ticks.get_next(datetime.datetime).astimezone(datetime.UTC)
        if tick <= after or (fixed and _second_pass(tick, tz)):
            continue
        return tick


def latest_tick(cron: str, timezone: str, at: datetime.datetime) -> datetime.datetime:
    """The last tick of ``cron`` at or before ``at``, in UTC (missed ticks coalesce to it).

    croniter walks back on the local wall clock, which in a repeated autumn hour can land on
    an earlier tick; walking forward with ``next_tick`` from there corrects it.
    """
    tz = zoneinfo.ZoneInfo(timezone)
    back = croniter(cron, at.astimezone(tz) + datetime.timedelta(microseconds=1))
    guess: datetime.datetime = back.get_prev(datetime.datetime).astimezone(datetime.UTC)
    if guess > at:  # never seen, but a guess after ``at`` would loop forever below
        earlier = croniter(cron, (at - datetime.timedelta(days=2)).astimezone(tz))
        guess = earlier.get_prev(datetime.datetime).astimezone(datetime.UTC)
    while True:
        following = next_tick(cron, timezone, guess)
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
        check_cron(self.name, self.cron)
        zone(self.name, self.timezone)
        jobopts.check_job_type(self.job_type)
        check_json(self.payload)
        if self.queue is not None:
            jobopts.check_queue(self.queue)
        jobopts.check_priority(self.priority)
        jobopts.check_max_attempts(self.max_attempts)
        jobopts.check_timeout(self.timeout_seconds)
