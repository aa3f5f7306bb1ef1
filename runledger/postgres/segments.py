"""The segments of ``runledger.events``: a period of events goes with one ``DROP TABLE``.

Since schema version 12, ``runledger.events`` is LIST-partitioned by its column ``segment``.
Each partition, ``runledger.events_s<N>``, holds the events written while N was the column's
DEFAULT, and ``runledger.event_segments`` records when each was opened and closed. The pruner
opens a new segment (a partition, then the DEFAULT moved to it) once its period is over, and
drops a closed segment once it closed longer ago than the shortest keep of the policy: by then
the jobs and runs the segment's events describe have gone, save those kept longer (dead
letters, queued and running jobs, open runs), whose events are first copied into the newest
segment with their ids (or, when they are most of the segment, the rest are deleted in place
and the segment stays a keep longer). The events of pruned jobs thus go a period at a time,
not a row at a time. Making, attaching and dropping a partition take the role that owns
``runledger.events`` (psycopg's ``InsufficientPrivilege`` otherwise).

Locks: both steps take the pruner's advisory lock (``PRUNE_LOCK_KEY``), then, for a moment at
the end, an ACCESS EXCLUSIVE lock on ``runledger.events``, which waits for the transactions
writing events at that moment to end and holds up new ones meanwhile. They wait at most
``DDL_LOCK_TIMEOUT`` for it, then give up (psycopg's ``LockNotAvailable``; the caller rolls
back and tries again later), so an enqueue or a completion is held up at most that long.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import attrs
import psycopg
from psycopg import sql

from runledger.core.retention import RUN_STATUS_OF
from runledger.core.status import JobStatus
from runledger.postgres.retention import PRUNE_LOCK_KEY

Conn = psycopg.Connection[Any]

DDL_LOCK_TIMEOUT = "set local lock_timeout = '100ms'"

TRY_LOCK = "select pg_try_advisory_xact_lock(%(key)s)"

SEGMENTS = """
select segment, opened_at, closed_at
from runledger.event_segments
order by segment
"""

NEWEST = """
select segment, opened_at, clock_timestamp() - opened_at
from runledger.event_segments
order by segment desc
limit 1
for update
"""

# Templates ({table} is the partition). The new segment is made and indexed empty, apart (no
# lock but its own), then attached and made the DEFAULT under one short lock of the parent.
_MAKE_SEGMENT = """
create table runledger.{table} (like runledger.events including defaults including constraints);
alter table runledger.{table} add constraint {pkey} primary key (id);
create index {job} on runledger.{table} (job_id, id) where job_id is not null;
create index {run} on runledger.{table} (workflow_run_id, id) where workflow_run_id is not null;
create index {queue} on runledger.{table} (queue, id) where queue is not null;
"""
LOCK_EVENTS = "lock table runledger.events in access exclusive mode"
_ATTACH_SEGMENT = """
alter table runledger.events attach partition runledger.{table} for values in ({n});
alter table only runledger.events alter column segment set default {n};
"""
# Under the lock: every event of the closing segment was written by a transaction that has
# committed, so each occurred before closed_at.
CLOSE_SEGMENT = """
update runledger.event_segments set closed_at = clock_timestamp() where segment = %(closing)s;
"""
RECORD_SEGMENT = "insert into runledger.event_segments (segment) values (%(n)s)"

# The oldest closed segment that closed more than the keep ago.
DUE_SEGMENT = """
select segment, closed_at
from runledger.event_segments
where closed_at < now() - %(keep)s::interval
order by segment
limit 1
"""

COPY_COST = 2
"""What copying an event out costs against deleting one in place (WAL and index entries:
an insert into the heap and four indexes, against a heap delete; 270 against 160 B of WAL
measured by ``benchmarks/prune_costs.py``), rounded up."""

# One sort of the segment: for each job and run its events name, one probe of whether it is
# still in the ledger (not one per event: a job has three or more). When the events of those
# ("kept") are few beside the rest, they are copied with their ids into the newest segment
# (the DEFAULT) and the caller drops the segment; when
# copying them would cost more than deleting the rest (a backlog of jobs queued for longer
# than the keep, runs open that long), the rest are deleted in place and the segment stays.
# A job or run deleted after this statement leaves its copied events behind as orphans,
# which go with the segment they were copied to.
_SORT_SEGMENT = """
with kept_jobs as (
    select i.id
    from (select distinct job_id as id from runledger.{table} where job_id is not null) as i
    where exists (select from runledger.jobs as j where j.id = i.id)
),
kept_runs as (
    select i.id
    from (select distinct workflow_run_id as id from runledger.{table}
          where workflow_run_id is not null) as i
    where exists (select from runledger.workflow_runs as r where r.id = i.id)
),
examined as (
    select e.id, kj.id is not null or kr.id is not null as kept
    from runledger.{table} as e
    left join kept_jobs as kj on kj.id = e.job_id
    left join kept_runs as kr on kr.id = e.workflow_run_id
),
tally as (
    select count(*) filter (where kept) as kept,
           count(*) filter (where not kept) as gone
    from examined
),
copied as (
    insert into runledger.events
        (id, occurred_at, kind, job_id, workflow_run_id, step_key, attempt, data, queue)
    select e.id, e.occurred_at, e.kind, e.job_id, e.workflow_run_id, e.step_key, e.attempt,
           e.data, e.queue
    from runledger.{table} as e
    join examined as x on x.id = e.id
    where x.kept and (select kept * %(copy_cost)s <= gone from tally)
    returning 1
),
deleted as (
    delete from runledger.{table} as e
    using examined as x
    where e.id = x.id and not x.kept and (select kept * %(copy_cost)s > gone from tally)
    returning 1
)
select kept, gone, (select count(*) from copied), (select count(*) from deleted)
from tally
"""
# Whether a job or run that finished before the segment closed, and is past its keep, is
# still in the ledger: the pruner has not caught up with the segment yet, and dropping it now
# would copy out (or clean around) the events of what it is about to delete. One descent of
# the (status, finished_at) index for each.
LAGGING_JOBS = """
select exists (
    select from runledger.jobs
    where status = %(status)s
      and finished_at < least(%(closed_at)s::timestamptz, now() - %(keep)s::interval)
      and workflow_run_id is null
)
"""
LAGGING_RUNS = """
select exists (
    select from runledger.workflow_runs
    where status = %(status)s
      and finished_at < least(%(closed_at)s::timestamptz, now() - %(keep)s::interval)
)
"""

# A segment cleaned in place is looked at again a keep later, when its kept events may have
# gone too.
RECLOSE_SEGMENT = """
update runledger.event_segments set closed_at = clock_timestamp() where segment = %(segment)s
"""
_DROP_SEGMENT = "drop table runledger.{table}"
FORGET_SEGMENT = "delete from runledger.event_segments where segment = %(segment)s"


@attrs.frozen(kw_only=True)
class Segment:
    """A row of ``runledger.event_segments``.

    Attributes:
        segment: its number, and the value of ``runledger.events.segment`` of its events.
        opened_at: when new events began to go into it.
        closed_at: when they stopped (None for the newest, which new events go into).
    """

    segment: int
    opened_at: datetime.datetime
    closed_at: datetime.datetime | None

    @property
    def table(self) -> str:
        """The partition's name in the ``runledger`` schema."""
        return table_name(self.segment)


@attrs.frozen(kw_only=True)
class Dropped:
    """What dropping one segment did.

    Attributes:
        segment: the segment dropped or cleaned, or None when none was due (or the lock was
            taken).
        events: events that went (with the segment, or deleted in it).
        kept: events of jobs and runs still in the ledger: copied into the newest segment
            first when the segment was dropped, left in it otherwise.
        dropped: False when the segment was cleaned in place instead: most of its events
            were of jobs and runs still kept, and copying them would have cost more than
            deleting the rest.
        waiting: True when nothing was done because the pruner has not yet deleted every
            due job and run that finished before the segment closed.
        locked: False when another pruner held the lock and nothing was done.
    """

    segment: int | None = None
    events: int = 0
    kept: int = 0
    dropped: bool = True
    waiting: bool = False
    locked: bool = True


def table_name(segment: int) -> str:
    """The name of segment ``segment``'s partition, without the schema."""
    return f"events_s{segment}"


def segments(conn: Conn) -> list[Segment]:
    """Every segment, oldest first (reads ``runledger.event_segments``; no lock)."""
    return [
        Segment(segment=row[0], opened_at=row[1], closed_at=row[2])
        for row in conn.execute(SEGMENTS).fetchall()
    ]


def _take_lock(conn: Conn) -> bool:
    row = conn.execute(TRY_LOCK, {"key": PRUNE_LOCK_KEY}).fetchone()
    return bool(row and row[0])


def open_segment(conn: Conn, *, older_than: datetime.timedelta) -> int | None:
    """Close the newest segment and open the next, if the newest was opened more than
    ``older_than`` ago; return the new segment's number, or None when it is not yet due or
    another pruner holds the lock.

    Runs in the caller's transaction (commit it to make the change); the new partition is
    made before the parent is locked, and the lock is held only to attach it and move the
    column's DEFAULT. Raises psycopg's ``LockNotAvailable`` after ``DDL_LOCK_TIMEOUT`` when
    transactions writing events hold the table that long; roll back and try later.
    """
    if not _take_lock(conn):
        return None
    row = conn.execute(NEWEST).fetchone()
    assert row is not None, "runledger.event_segments is empty: migration 0012 made segment 0"
    newest, _opened_at, age = row
    if age < older_than:
        return None
    n = newest + 1
    table = table_name(n)
    conn.execute(
        sql.SQL(_MAKE_SEGMENT).format(
            table=sql.Identifier(table),
            pkey=sql.Identifier(f"{table}_pkey"),
            job=sql.Identifier(f"{table}_job"),
            run=sql.Identifier(f"{table}_run"),
            queue=sql.Identifier(f"{table}_queue"),
        )
    )
    conn.execute(DDL_LOCK_TIMEOUT)
    conn.execute(LOCK_EVENTS)
    conn.execute(sql.SQL(_ATTACH_SEGMENT).format(table=sql.Identifier(table), n=sql.Literal(n)))
    conn.execute(CLOSE_SEGMENT, {"closing": newest})
    conn.execute(RECORD_SEGMENT, {"n": n})
    return int(n)


def drop_segment(
    conn: Conn,
    keep: datetime.timedelta,
    *,
    keeps: Mapping[JobStatus, datetime.timedelta] | None = None,
) -> Dropped:
    """Drop the oldest segment that closed more than ``keep`` ago, after copying into the
    newest segment the events of the jobs and runs still in the ledger; or, when those are
    more than a ``COPY_COST``-th of the rest, delete the rest in place, keep the segment and
    look at it again ``keep`` later. With ``keeps`` (the policy's keep of each pruned state),
    a segment waits while a due job or run that finished before it closed is still there:
    its events are the pruner's to leave, not to copy.

    Runs in the caller's transaction (commit it to make the change). Reads the segment once,
    probing for each event whether its job or run exists; holds the lock on the parent only
    for the ``DROP``. Raises psycopg's ``LockNotAvailable`` after ``DDL_LOCK_TIMEOUT`` when
    transactions that use the events hold the table that long; roll back and try later.
    """
    if not _take_lock(conn):
        return Dropped(locked=False)
    row = conn.execute(DUE_SEGMENT, {"keep": keep}).fetchone()
    if row is None:
        return Dropped()
    segment, closed_at = int(row[0]), row[1]
    for status, status_keep in (keeps or {}).items():
        params = {"closed_at": closed_at, "keep": status_keep}
        jobs = conn.execute(LAGGING_JOBS, {**params, "status": str(status)}).fetchone()
        runs = conn.execute(
            LAGGING_RUNS, {**params, "status": str(RUN_STATUS_OF[status])}
        ).fetchone()
        if (jobs and jobs[0]) or (runs and runs[0]):
            return Dropped(segment=segment, dropped=False, waiting=True)
    table = sql.Identifier(table_name(segment))
    tally = conn.execute(
        sql.SQL(_SORT_SEGMENT).format(table=table), {"copy_cost": COPY_COST}
    ).fetchone()
    assert tally is not None
    kept, gone, copied, deleted = (int(n) for n in tally)
    if kept * COPY_COST > gone:
        conn.execute(RECLOSE_SEGMENT, {"segment": segment})
        return Dropped(segment=segment, events=deleted, kept=kept, dropped=False)
    conn.execute(DDL_LOCK_TIMEOUT)
    conn.execute(LOCK_EVENTS)
    conn.execute(sql.SQL(_DROP_SEGMENT).format(table=table))
    conn.execute(FORGET_SEGMENT, {"segment": segment})
    assert copied == kept
    return Dropped(segment=segment, events=gone, kept=kept)
