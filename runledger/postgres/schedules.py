"""Cron schedules in ``runledger.schedules`` and the firing of due ticks.

Firing locks due schedule rows with SKIP LOCKED, so several schedulers never fire the same
tick; the job of a tick is inserted in the transaction that moves ``next_run_at`` past it,
and a unique index on (schedule_name, scheduled_at) backs that up. After downtime the missed
ticks coalesce: only the latest due tick fires. A row whose ticks cannot be computed (written
by hand or by an older version, such as February 30th) is reported and skipped, never fatal.

A row's ``origin`` says who manages it. ``upsert_schedule`` writes ``'api'`` rows, which stay
until ``delete_schedule``. ``sync_schedules`` (a runtime's start) writes the registry's
declarations as ``'registry'`` rows and deletes the ``'registry'`` rows of its own job types
that the registry no longer declares, so a schedule removed from the code stops firing once
the new code starts. Syncs take a transaction-level advisory lock: runtimes of an old and a
new release starting together would otherwise lock the same rows in different orders (the
old one upserting a row the new one deletes).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence

import attrs
from psycopg.rows import class_row

from runledger.core.job import DEFAULT_QUEUE
from runledger.core.payload import JsonValue, dumps
from runledger.core.schedule import ScheduleSpec, latest_tick, next_tick
from runledger.errors import InvalidCron, ScheduleNotFound, UnknownTimezone
from runledger.postgres.channels import JOBS
from runledger.postgres.connection import Conn, reading, savepoint, writing
from runledger.postgres.ids import new_id

NOW = "select now()"
UPSERT_SCHEDULE = """
insert into runledger.schedules (
    name, origin, cron, timezone, job_type, payload, queue, priority, max_attempts,
    timeout_seconds, next_run_at)
values (%(name)s, %(origin)s, %(cron)s, %(timezone)s, %(job_type)s, %(payload)s::jsonb,
        %(queue)s, %(priority)s, %(max_attempts)s, %(timeout_seconds)s, %(next_run_at)s)
on conflict (name) do update
set origin = excluded.origin,
    cron = excluded.cron,
    timezone = excluded.timezone,
    job_type = excluded.job_type,
    payload = excluded.payload,
    queue = excluded.queue,
    priority = excluded.priority,
    max_attempts = excluded.max_attempts,
    timeout_seconds = excluded.timeout_seconds,
    -- keep the pending tick unless the timing changed
    next_run_at = case
        when runledger.schedules.cron = excluded.cron
             and runledger.schedules.timezone = excluded.timezone
        then runledger.schedules.next_run_at
        else excluded.next_run_at end,
    updated_at = now()
where (runledger.schedules.origin, runledger.schedules.cron, runledger.schedules.timezone,
       runledger.schedules.job_type, runledger.schedules.payload, runledger.schedules.queue,
       runledger.schedules.priority, runledger.schedules.max_attempts,
       runledger.schedules.timeout_seconds)
      is distinct from
      (excluded.origin, excluded.cron, excluded.timezone, excluded.job_type, excluded.payload,
       excluded.queue, excluded.priority, excluded.max_attempts, excluded.timeout_seconds)
"""
SYNC_LOCK_KEY = 0x726C7363686564 - 2**63
"""The advisory lock that serialises ``sync_schedules`` ("rlsched")."""
SYNC_LOCK = "select pg_advisory_xact_lock(%(key)s)"
PRUNE_UNDECLARED = """
delete from runledger.schedules
where origin = 'registry' and job_type = any(%(job_types)s) and name <> all(%(declared)s)
returning name
"""
SET_ENABLED = """
update runledger.schedules
set enabled = %(enabled)s, updated_at = now(),
    next_run_at = case when %(enabled)s and not enabled then %(next_run_at)s
                       else next_run_at end
where name = %(name)s
returning name
"""
DELETE_SCHEDULE = "delete from runledger.schedules where name = %(name)s returning name"
LIST_SCHEDULES = """
select name, origin, cron, timezone, job_type, payload, queue, priority, max_attempts,
       timeout_seconds, enabled, next_run_at, last_run_at, last_job_id
from runledger.schedules
order by name
"""
GET_SCHEDULE = "select cron, timezone from runledger.schedules where name = %(name)s"
LOCK_DUE = """
select name, cron, timezone, job_type, payload, queue, priority, max_attempts,
       timeout_seconds, next_run_at, now()
from runledger.schedules
where enabled and next_run_at <= now()
  and not exists (
      select from unnest(%(skip_names)s::text[], %(skip_crons)s::text[],
                         %(skip_timezones)s::text[]) as skip (name, cron, timezone)
      where (skip.name, skip.cron, skip.timezone)
            = (runledger.schedules.name, runledger.schedules.cron, runledger.schedules.timezone))
order by name
limit %(limit)s
for no key update skip locked
"""
FIRE = f"""
with tick as (
    -- held for the job's whole life, finished or not: a tick that already became a job
    -- becomes no other
    insert into runledger.schedule_ticks (schedule_name, scheduled_at, job_id)
    values (%(name)s, %(tick)s, %(job_id)s)
    on conflict do nothing
    returning job_id
),
job as (
    insert into runledger.jobs (
        id, queue, job_type, payload, priority, max_attempts, timeout_seconds,
        schedule_name, scheduled_at)
    select %(job_id)s, %(queue)s, %(job_type)s, %(payload)s::jsonb, %(priority)s,
           %(max_attempts)s, %(timeout_seconds)s, %(name)s, %(tick)s
    from tick
    on conflict (schedule_name, scheduled_at) where schedule_name is not null do nothing
    returning id, queue
),
event as (
    insert into runledger.events (kind, job_id, data)
    select 'job.enqueued', id,
           jsonb_build_object('schedule', %(name)s::text, 'scheduled_at', %(tick)s::timestamptz)
    from job
),
moved as (
    update runledger.schedules
    set next_run_at = %(next_run_at)s, last_run_at = %(tick)s,
        last_job_id = coalesce((select id from job), last_job_id), updated_at = now()
    where name = %(name)s
)
select (select id from job), (select count(pg_notify('{JOBS}', queue)) from job)
"""


@attrs.frozen(kw_only=True)
class ScheduleRecord:
    """A row of ``runledger.schedules``."""

    name: str
    origin: str
    """``'registry'`` (declared in code, synced by runtimes) or ``'api'`` (upsert_schedule)."""
    cron: str
    timezone: str
    job_type: str
    payload: JsonValue
    queue: str
    priority: int
    max_attempts: int | None
    timeout_seconds: int | None
    enabled: bool
    next_run_at: datetime.datetime
    last_run_at: datetime.datetime | None
    last_job_id: uuid.UUID | None


@attrs.frozen(kw_only=True)
class Unfireable:
    """A due schedule whose ticks cannot be computed, so firing skips it.

    Only rows no ``ScheduleSpec`` accepts are like that: written by hand or by an older
    version. Equal records (same name, cron and timezone) describe the same broken row.
    """

    name: str
    cron: str
    timezone: str
    error: InvalidCron | UnknownTimezone = attrs.field(eq=False)


@attrs.frozen(kw_only=True)
class Fired:
    """A tick that became a job."""

    name: str
    tick: datetime.datetime
    job_id: uuid.UUID
    job_type: str


def _now(conn: Conn) -> datetime.datetime:
    row = conn.execute(NOW).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def upsert_schedule(conn: Conn, spec: ScheduleSpec) -> None:
    """Create or update a schedule in the caller's transaction.

    A changed cron expression or timezone moves the next tick; other changes keep it. Writing
    an identical schedule writes nothing. The schedule stays until ``delete_schedule``, also
    when it had been declared in a registry (runtimes' syncs no longer delete it).
    """
    with writing(conn):
        _upsert(conn, spec, "api", _now(conn))


def sync_schedules(
    conn: Conn, declared: Sequence[ScheduleSpec], *, job_types: Iterable[str]
) -> list[str]:
    """Write a registry's schedules in the caller's transaction; return the names deleted.

    Each declared schedule is upserted as a ``'registry'`` row (as ``upsert_schedule`` does,
    so a paused one stays paused). Then the ``'registry'`` rows for ``job_types`` (the
    registry's handlers and the job types of its schedules) that ``declared`` does not name
    are deleted: other applications sharing the schema keep theirs, and so do ``'api'`` rows.
    Jobs already fired stay.
    """
    with writing(conn):
        conn.execute(SYNC_LOCK, {"key": SYNC_LOCK_KEY})
        now = _now(conn)
        for spec in sorted(declared, key=lambda spec: spec.name):
            _upsert(conn, spec, "registry", now)
        scope = sorted({*job_types, *(spec.job_type for spec in declared)})
        rows = conn.execute(
            PRUNE_UNDECLARED,
            {"job_types": scope, "declared": [spec.name for spec in declared]},
        ).fetchall()
        return sorted(row[0] for row in rows)


def _upsert(conn: Conn, spec: ScheduleSpec, origin: str, now: datetime.datetime) -> None:
    conn.execute(
        UPSERT_SCHEDULE,
        {
            "name": spec.name,
            "origin": origin,
            "cron": spec.cron,
            "timezone": spec.timezone,
            "job_type": spec.job_type,
            "payload": dumps({} if spec.payload is None else spec.payload),
            "queue": spec.queue or DEFAULT_QUEUE,
            "priority": spec.priority,
            "max_attempts": spec.max_attempts,
            "timeout_seconds": spec.timeout_seconds,
            "next_run_at": next_tick(spec.cron, spec.timezone, now),
        },
    )


def _set_enabled(conn: Conn, name: str, enabled: bool) -> None:
    with writing(conn):
        found = conn.execute(GET_SCHEDULE, {"name": name}).fetchone()
        if found is None:
            raise ScheduleNotFound(name=name)
        # Only resuming needs the next tick: a row that has none can still be paused.
        upcoming = next_tick(found[0], found[1], _now(conn), name=name) if enabled else None
        conn.execute(SET_ENABLED, {"name": name, "enabled": enabled, "next_run_at": upcoming})


def pause_schedule(conn: Conn, name: str) -> None:
    """Stop firing a schedule until it is resumed. Raises ``ScheduleNotFound``."""
    _set_enabled(conn, name, False)


def resume_schedule(conn: Conn, name: str) -> None:
    """Fire a paused schedule again from its next tick (ticks missed while paused are
    skipped).

    Raises:
        ScheduleNotFound: no schedule has this name.
        InvalidCron / UnknownTimezone: the stored row has no next tick (it was written by
            hand or by an older version); nothing is written.
    """
    _set_enabled(conn, name, True)


def delete_schedule(conn: Conn, name: str) -> None:
    """Delete a schedule; jobs it enqueued stay. Raises ``ScheduleNotFound``."""
    with writing(conn):
        if conn.execute(DELETE_SCHEDULE, {"name": name}).fetchone() is None:
            raise ScheduleNotFound(name=name)


def list_schedules(conn: Conn) -> list[ScheduleRecord]:
    """Every schedule, by name."""
    with reading(conn), conn.cursor(row_factory=class_row(ScheduleRecord)) as cur:
        return cur.execute(LIST_SCHEDULES).fetchall()


def fire_due(
    conn: Conn,
    *,
    limit: int = 100,
    skip: Collection[Unfireable] = (),
    on_unfireable: Callable[[Unfireable], None] | None = None,
) -> list[Fired]:
    """Turn due ticks into jobs in the caller's transaction (commit it to publish them).

    A due schedule whose ticks cannot be computed is left as it is and passed to
    ``on_unfireable``; the others fire. Rows equal to one in ``skip`` (same name, cron and
    timezone) are not read at all, so known broken rows take no place within ``limit``.
    """
    fired: list[Fired] = []
    skipped = {
        "skip_names": [row.name for row in skip],
        "skip_crons": [row.cron for row in skip],
        "skip_timezones": [row.timezone for row in skip],
    }
    with writing(conn), savepoint(conn, "runledger_fire"):
        for (
            name, cron, timezone, job_type, payload, queue, priority, max_attempts, timeout,
            _due, now,
        ) in conn.execute(LOCK_DUE, {"limit": limit, **skipped}).fetchall():  # fmt: skip
            try:
                tick = latest_tick(cron, timezone, now, name=name)
                upcoming = next_tick(cron, timezone, now, name=name)
            except (InvalidCron, UnknownTimezone) as err:
                if on_unfireable is not None:
                    on_unfireable(Unfireable(name=name, cron=cron, timezone=timezone, error=err))
                continue
            job_id = new_id()
            row = conn.execute(
                FIRE,
                {
                    "job_id": job_id,
                    "queue": queue,
                    "job_type": job_type,
                    "payload": dumps(payload),
                    "priority": priority,
                    "max_attempts": max_attempts,
                    "timeout_seconds": timeout,
                    "name": name,
                    "tick": tick,
                    "next_run_at": upcoming,
                },
            ).fetchone()
            if row is not None and row[0] is not None:
                fired.append(Fired(name=name, tick=tick, job_id=row[0], job_type=job_type))
    return fired
