"""Queue settings on the caller's connection: ``set_queue_limits``, ``pause_queue``,
``resume_queue``, ``queue_settings`` and ``list_queue_settings``.

Settings live in ``runledger.queues`` and every runtime's next claim obeys them (see
``runledger.postgres.attempts``). A queue without a row has no limit and is not paused.
Each change writes a ``queue.limited``, ``queue.paused`` or ``queue.resumed`` event naming
who made it. The writes lock the queue's row until the caller commits: claims of a queue
with a limit skip it meanwhile (they lock that row to admit starts), so commit promptly.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from typing import Any, Final

import attrs
from psycopg.rows import class_row

from runledger.core.job import check_queue
from runledger.core.limits import QueueLimits, check_queue_limits
from runledger.postgres.connection import Conn, reading, writing


class _Keep(enum.Enum):
    KEEP = "KEEP"


KEEP: Final = _Keep.KEEP
"""``set_queue_limits``' default: leave that limit as it is."""


@attrs.frozen(kw_only=True)
class QueueSettings:
    """A queue's flow-control settings (``runledger.queues``).

    Attributes:
        queue: the queue's name.
        paused: whether claims skip it.
        paused_at: when it was paused, or None.
        paused_by: who paused it, or None.
        concurrency: the most of its jobs running at once across all runtimes, or None.
        rate: the most starts per ``per`` seconds across all runtimes, or None.
        per: the rate's window in seconds, or None without a rate.
        updated_at: when a setting last changed, or None for a queue never set.
    """

    queue: str
    paused: bool = False
    paused_at: datetime.datetime | None = None
    paused_by: str | None = None
    concurrency: int | None = None
    rate: int | None = None
    per: float | None = None
    updated_at: datetime.datetime | None = None

    @property
    def limited(self) -> bool:
        """Whether the queue has a concurrency or rate limit."""
        return self.concurrency is not None or self.rate is not None

    def limits_text(self) -> str:
        """The limits in a few words: ``concurrency 5, rate 100 per 60 s`` or ``no limits``."""
        parts = []
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        if self.rate is not None:
            parts.append(f"rate {self.rate} per {self.per:g} s")
        return ", ".join(parts) or "no limits"


_COLUMNS = """queue, paused, paused_at, paused_by, concurrency, rate, per_seconds as per,
       updated_at"""

SELECT_QUEUE = f"select {_COLUMNS} from runledger.queues where queue = %(queue)s"
SELECT_QUEUES = f"select {_COLUMNS} from runledger.queues order by queue"

# The row is locked first (inserted if missing), so two changes of one queue serialise and
# each event records the settings it left.
LOCK_QUEUE = f"""
insert into runledger.queues as q (queue) values (%(queue)s)
on conflict (queue) do update set queue = q.queue
returning {_COLUMNS}
"""

SET_LIMITS = f"""
with updated as (
    update runledger.queues
    set concurrency = %(concurrency)s, rate = %(rate)s, per_seconds = %(per)s,
        window_start = case when per_seconds is distinct from %(per)s then null
                            else window_start end,
        window_starts = case when per_seconds is distinct from %(per)s then 0
                             else window_starts end,
        updated_at = now()
    where queue = %(queue)s
    returning {_COLUMNS}
),
event as (
    insert into runledger.events (kind, queue, data)
    select 'queue.limited', u.queue, jsonb_build_object(
        'concurrency', u.concurrency, 'rate', u.rate, 'per', u.per,
        'by', coalesce(%(by)s::text, session_user::text))
    from updated as u
)
select * from updated
"""

PAUSE = f"""
with updated as (
    update runledger.queues
    set paused = true, paused_at = now(), paused_by = coalesce(%(by)s::text, session_user::text),
        updated_at = now()
    where queue = %(queue)s and not paused
    returning {_COLUMNS}
),
event as (
    insert into runledger.events (kind, queue, data)
    select 'queue.paused', u.queue, jsonb_strip_nulls(jsonb_build_object(
        'by', u.paused_by, 'reason', %(reason)s::text))
    from updated as u
)
select * from updated
"""

RESUME = f"""
with previous as (
    select paused_at from runledger.queues where queue = %(queue)s
),
updated as (
    update runledger.queues
    set paused = false, paused_at = null, paused_by = null, updated_at = now()
    where queue = %(queue)s and paused
    returning {_COLUMNS}
),
event as (
    insert into runledger.events (kind, queue, data)
    select 'queue.resumed', u.queue, jsonb_build_object(
        'by', coalesce(%(by)s::text, session_user::text),
        'paused_seconds', extract(epoch from now() - p.paused_at)::float8)
    from updated as u cross join previous as p
)
select * from updated
"""


def _lock(conn: Conn, queue: str) -> QueueSettings:
    with conn.cursor(row_factory=class_row(QueueSettings)) as cur:
        found = cur.execute(LOCK_QUEUE, {"queue": queue}).fetchone()
    assert found is not None
    return found


def _write(conn: Conn, sql: str, params: dict[str, Any]) -> QueueSettings | None:
    with conn.cursor(row_factory=class_row(QueueSettings)) as cur:
        return cur.execute(sql, params).fetchone()


def set_queue_limits(
    conn: Conn,
    queue: str,
    *,
    concurrency: int | _Keep | None = KEEP,
    rate: int | _Keep | None = KEEP,
    per: float | _Keep = KEEP,
    by: str | None = None,
) -> QueueSettings:
    """Set a queue's limits in the caller's transaction; every runtime obeys them from its
    next claim after the commit.

    ``concurrency``: the most of the queue's jobs running at once across all runtimes.
    ``rate`` per ``per`` seconds: the most starts in each window of ``per`` seconds, windows
    aligned to the Unix epoch (so up to twice ``rate`` can start across a window's edge).
    None removes a limit; a limit not passed is kept. ``per`` defaults to the queue's current
    window, else 1 second. ``by`` (default: the database role) is recorded in the
    ``queue.limited`` event. Jobs already running keep running when a limit is lowered.

    Blocks for a few round trips, or while another transaction changes the queue or a claim
    admits starts from it; holds the queue's row lock until the caller commits.

    Raises:
        BlankQueue / TextTooLong: the queue name is invalid.
        InvalidQueueLimit: a limit is out of range; nothing was written.
        TransactionAborted / ConnectionNotUsable / DatabaseError: as ``enqueue``.
    """
    check_queue(queue)
    # What was passed is checked before the database is touched; what is kept was checked
    # when it was set.
    check_queue_limits(
        queue,
        concurrency=None if concurrency is KEEP else concurrency,
        rate=None if rate is KEEP else rate,
        per=1.0 if per is KEEP else per,
    )
    with writing(conn):
        current = _lock(conn, queue)
        new_concurrency = current.concurrency if concurrency is KEEP else concurrency
        new_rate = current.rate if rate is KEEP else rate
        new_per = (current.per or 1.0) if per is KEEP else float(per)
        updated = _write(
            conn,
            SET_LIMITS,
            {
                "queue": queue,
                "concurrency": new_concurrency,
                "rate": new_rate,
                "per": None if new_rate is None else new_per,
                "by": by,
            },
        )
    assert updated is not None
    return updated


def pause_queue(
    conn: Conn, queue: str, *, by: str | None = None, reason: str | None = None
) -> QueueSettings:
    """Pause a queue in the caller's transaction: no runtime claims from it once the caller
    commits; jobs already claimed run to their end; enqueue still works.

    A claim whose snapshot was taken before the commit may still start jobs, but its
    transaction began before the pause: no job of the queue is claimed at a time
    (``jobs.started_at``) after the pause committed. Writes a ``queue.paused`` event with
    ``by`` (default: the database role) and ``reason``; pausing a paused queue changes
    nothing and writes no event. Blocks and raises as ``set_queue_limits``.
    """
    check_queue(queue)
    with writing(conn):
        current = _lock(conn, queue)
        updated = _write(conn, PAUSE, {"queue": queue, "by": by, "reason": reason})
    return current if updated is None else updated


def resume_queue(conn: Conn, queue: str, *, by: str | None = None) -> QueueSettings:
    """Resume a paused queue in the caller's transaction: runtimes claim from it again once
    the caller commits. Writes a ``queue.resumed`` event with ``by`` and how long it was
    paused; resuming a queue that is not paused changes nothing and writes no event. Blocks
    and raises as ``set_queue_limits``.
    """
    check_queue(queue)
    with writing(conn):
        current = _lock(conn, queue)
        updated = _write(conn, RESUME, {"queue": queue, "by": by})
    return current if updated is None else updated


def queue_settings(conn: Conn, queue: str) -> QueueSettings:
    """A queue's settings (unlimited and not paused when it has none). Reads only."""
    check_queue(queue)
    with reading(conn), conn.cursor(row_factory=class_row(QueueSettings)) as cur:
        found = cur.execute(SELECT_QUEUE, {"queue": queue}).fetchone()
    return QueueSettings(queue=queue) if found is None else found


def list_queue_settings(conn: Conn) -> list[QueueSettings]:
    """Every queue that has settings, by name. Reads only."""
    with reading(conn), conn.cursor(row_factory=class_row(QueueSettings)) as cur:
        return cur.execute(SELECT_QUEUES).fetchall()


def apply_queue_limits(
    conn: Conn, limits: Mapping[str, QueueLimits], *, by: str | None = None
) -> list[QueueSettings]:
    """Make each named queue's limits what ``limits`` states (a framework's
    ``RUNLEDGER_QUEUE_LIMITS``), in the caller's transaction; return the settings of the
    queues it changed, by name.

    A queue whose limits already match is not written (no event), so running it at every
    deploy records only changes. Queues not named keep their settings, and pauses are left
    alone. Blocks and raises as ``set_queue_limits``.
    """
    changed: list[QueueSettings] = []
    for queue in sorted(limits):
        wanted = limits[queue]
        current = queue_settings(conn, queue)
        stated = (wanted.concurrency, wanted.rate, None if wanted.rate is None else wanted.per)
        if (current.concurrency, current.rate, current.per) == stated:
            continue
        settings = set_queue_limits(
            conn, queue, concurrency=wanted.concurrency, rate=wanted.rate, per=wanted.per, by=by
        )
        changed.append(settings)
    return changed
