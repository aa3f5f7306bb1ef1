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


def next_tick(cron: str, timezone: str, after: datetime.datetime) -> datetime.datetime:
    """The first tick of ``cron`` in ``timezone`` strictly after ``after`` (aware), in UTC."""
    local = after.astimezone(zoneinfo.ZoneInfo(timezone))
    tick = croniter(cron, local).get_next(datetime.datetime)
    return tick.astimezone(datetime.UTC)


def latest_tick(cron: str, timezone: str, at: datetime.datetime) -> datetime.datetime:
    """The last tick of ``cron`` at or before ``at``, in UTC (missed ticks coalesce to it)."""
    local = at.astimezone(zoneinfo.ZoneInfo(timezone))
    it = croniter(cron, local + datetime.timedelta(microseconds=1))
    return it.get_prev(datetime.datetime).astimezone(datetime.UTC)


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
