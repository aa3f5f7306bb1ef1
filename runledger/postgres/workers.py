"""Worker presence: the ``runledger.workers`` row of each live runtime, and the heartbeat's
reads of the jobs whose lease it lost.

The oldest live row (by ``started_at``, then id) is the one runtime that reads the queue depth
for metrics; each heartbeat's touch says whether it is that one.

A runtime registers its row when it starts, its heartbeat refreshes ``last_seen_at`` with every
lease renewal (every ``lease_seconds / 3``), and it deletes the row when it stops cleanly. Ages
are measured on the server's clock, so workers on hosts whose clocks drift still agree.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable, Sequence

import attrs
from psycopg.rows import class_row

from runledger.postgres.connection import Conn, reading

STALE_AFTER_LEASES = 1.0
"""A row not seen for this many of its worker's ``lease_seconds`` (three missed heartbeats) is
stale: the worker died, hangs, or cannot reach the database. Its leases have expired too."""

GONE_AFTER_LEASES = 10.0
"""A row not seen for this many of its worker's ``lease_seconds`` (five minutes with the default
30 s lease) is deleted by any runtime's reaper: the worker is taken for dead."""

REGISTER_WORKER = """
insert into runledger.workers as w
    (id, host, pid, version, queues, handlers, concurrency, lease_seconds, started_at,
     last_seen_at)
values (%(id)s, %(host)s, %(pid)s, %(version)s, %(queues)s, %(handlers)s, %(concurrency)s,
        %(lease_seconds)s, coalesce(%(started_at)s::timestamptz, now()), now())
on conflict (id) do update
set host = excluded.host, pid = excluded.pid, version = excluded.version,
    queues = excluded.queues, handlers = excluded.handlers,
    concurrency = excluded.concurrency, lease_seconds = excluded.lease_seconds,
    started_at = excluded.started_at, last_seen_at = excluded.last_seen_at
returning started_at
"""

TOUCH_WORKER = "update runledger.workers set last_seen_at = now() where id = %(id)s"

# The oldest live row reads the queue depth for metrics. The subquery sees the rows as they
# were before this update, so the worker's own row counts as live whatever its age.
TOUCH_WORKER_RANKED = """
with touched as (
    update runledger.workers set last_seen_at = now() where id = %(id)s returning id
)
select exists (select from touched),
       coalesce((
           select w.id = %(id)s
           from runledger.workers as w
           where w.id = %(id)s
              or w.last_seen_at >= now() - make_interval(secs => w.lease_seconds * %(leases)s)
           order by w.started_at, w.id
           limit 1
       ), false)
"""

OLDEST_LIVE_WORKER = """
select id
from runledger.workers
where last_seen_at >= now() - make_interval(secs => lease_seconds * %(leases)s)
order by started_at, id
limit 1
"""

DELETE_WORKER = "delete from runledger.workers where id = %(id)s"

DELETE_GONE_WORKERS = """
delete from runledger.workers
where last_seen_at < now() - make_interval(secs => lease_seconds * %(leases)s)
returning id
"""

LIST_WORKERS = """
select id, host, pid, version, queues, handlers, concurrency, lease_seconds, started_at,
       last_seen_at,
       extract(epoch from now() - last_seen_at)::float8 as last_seen_seconds,
       last_seen_at < now() - make_interval(secs => lease_seconds * %(leases)s) as stale
from runledger.workers
order by host, started_at, id
"""

JOB_STATUSES = "select id, status from runledger.jobs where id = any(%(ids)s)"


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen(kw_only=True)
class WorkerInfo:
    """What a runtime says about itself in its ``runledger.workers`` row."""

    id: str
    host: str
    pid: int
    version: str
    queues: tuple[str, ...] = attrs.field(converter=_strings)
    handlers: tuple[str, ...] = attrs.field(converter=_strings)
    concurrency: int
    lease_seconds: float


@attrs.frozen(kw_only=True)
class WorkerRecord:
    """A row of ``runledger.workers``, with its age on the server's clock.

    ``last_seen_seconds`` is how long ago the row was last refreshed; ``stale`` says it was
    more than ``STALE_AFTER_LEASES`` of its worker's leases ago.
    """

    id: str
    host: str
    pid: int
    version: str
    queues: tuple[str, ...] = attrs.field(converter=_strings)
    handlers: tuple[str, ...] = attrs.field(converter=_strings)
    concurrency: int
    lease_seconds: float
    started_at: datetime.datetime
    last_seen_at: datetime.datetime
    last_seen_seconds: float
    stale: bool


def register_worker(
    conn: Conn, worker: WorkerInfo, *, started_at: datetime.datetime | None = None
) -> datetime.datetime:
    """Insert (or replace) ``worker``'s row, seen now; return its ``started_at``.

    ``started_at`` keeps the time of a row registered before (default: now). Runs in the
    caller's transaction.
    """
    row = conn.execute(
        REGISTER_WORKER,
        {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "version": worker.version,
            "queues": list(worker.queues),
            "handlers": list(worker.handlers),
            "concurrency": worker.concurrency,
            "lease_seconds": worker.lease_seconds,
            "started_at": started_at,
        },
    ).fetchone()
    assert row is not None
    registered: datetime.datetime = row[0]
    return registered


def touch_worker(conn: Conn, worker_id: str) -> bool:
    """Mark the worker seen now; False if its row is gone (a reaper took it for dead)."""
    return conn.execute(TOUCH_WORKER, {"id": worker_id}).rowcount == 1


def touch_worker_ranked(conn: Conn, worker_id: str) -> tuple[bool, bool]:
    """Mark the worker seen now, in one statement that also says whether its row is the
    oldest live one (by ``started_at``, then id; live: seen within ``STALE_AFTER_LEASES`` of
    its lease): (row found, oldest). Both False if the row is gone. Runs in the caller's
    transaction; no session state (fit for PgBouncer in transaction mode)."""
    row = conn.execute(
        TOUCH_WORKER_RANKED, {"id": worker_id, "leases": STALE_AFTER_LEASES}
    ).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1])


def oldest_live_worker(conn: Conn) -> str | None:
    """The id of the oldest live worker (by ``started_at``, then id), or None if none is.
    Runs in the caller's transaction."""
    row = conn.execute(OLDEST_LIVE_WORKER, {"leases": STALE_AFTER_LEASES}).fetchone()
    return None if row is None else str(row[0])


def delete_worker(conn: Conn, worker_id: str) -> bool:
    """Delete the worker's row; False if there was none."""
    return conn.execute(DELETE_WORKER, {"id": worker_id}).rowcount == 1


def delete_gone_workers(conn: Conn) -> list[str]:
    """Delete the rows not seen for ``GONE_AFTER_LEASES`` of their leases; return their ids."""
    rows = conn.execute(DELETE_GONE_WORKERS, {"leases": GONE_AFTER_LEASES}).fetchall()
    return [row[0] for row in rows]


def list_workers(conn: Conn) -> list[WorkerRecord]:
    """Every registered worker, stale ones included, by host and start time.

    Raises:
        SchemaNotMigrated, ConnectionNotUsable, DatabaseError: as the other reads.
    """
    with reading(conn), conn.cursor(row_factory=class_row(WorkerRecord)) as cur:
        return cur.execute(LIST_WORKERS, {"leases": STALE_AFTER_LEASES}).fetchall()


def job_statuses(conn: Conn, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """The status of each job of ``job_ids`` (for the heartbeat: why a lease was lost)."""
    if not job_ids:
        return {}
    return dict(conn.execute(JOB_STATUSES, {"ids": list(job_ids)}).fetchall())
