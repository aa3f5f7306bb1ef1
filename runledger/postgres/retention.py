"""Pruning the ledger: deleting finished jobs and workflow runs past their retention.

Every function here works in bounded batches, each in the caller's transaction, oldest first.
A batch first takes ``PRUNE_LOCK_KEY`` with ``pg_try_advisory_xact_lock``: one pruner at a
time across every runtime and ``runledger prune``, and a pruner that finds it taken gives the
round up (``Pruned.locked`` is False) rather than wait.

Locks: a batch touches only rows of finished jobs and runs, which claims, completions and the
reaper never lock, and it takes them in the ledger's lock order (jobs, then runs; see
``runledger.postgres.workflow``). Standalone jobs are taken with ``SKIP LOCKED``, so a job
being requeued or cancelled at that moment is left for the next round. A job of a workflow
run goes only with its run, once the run is finished. Attempts and events go in the same
statement as the job or run they describe, which tells the delete trigger so
(``runledger.pruning``) rather than let it look the attempts up again.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import attrs
import psycopg

from runledger.core.retention import RUN_STATUS_OF
from runledger.core.status import JobStatus

Conn = psycopg.Connection[Any]

# b"rlprune!" as a big-endian int, minus 2**63: shared by every pruner.
PRUNE_LOCK_KEY = 0x726C7072756E6521 - 2**63

JOB_BATCH = 2_000
"""Standalone jobs deleted per transaction (with their attempts and events)."""
RUN_BATCH = 100
"""Workflow runs deleted per transaction (with their steps, jobs, attempts and events)."""
EVENT_WINDOW = 5_000
"""Events examined per transaction by the orphan sweep."""

TRY_LOCK = "select pg_try_advisory_xact_lock(%(key)s)"
# A batch that finds itself waiting on a lock gives up (and is retried next round) rather
# than hold up whoever holds it.
LOCK_TIMEOUT = "set local lock_timeout = '1s'"

# Step 1: the due jobs, oldest first, locked (skipping those others hold), and which table
# each is in: runledger.job_history, or the hot table for a finished job not yet moved there.
LOCK_DUE_JOBS = """
select id, tableoid = 'runledger.job_history'::regclass
from runledger.jobs
where status = %(status)s
  and finished_at < now() - %(keep)s::interval
  and workflow_run_id is null
order by finished_at
limit %(limit)s
for update skip locked
"""

# Step 2: delete them, with their attempts and events. Each table is read through its index
# on the job id, over the batch's range of ids only (ids are time-ordered UUIDs unless the
# caller gave its own: the batch's jobs, and so their rows, sit side by side in those
# indexes), and a row read goes if its job is in the batch. The planner reads that range, or
# probes the index once per job of the batch when it estimates that cheaper; either way no
# plan reads a whole table, however large the queue, the events or the history (joining the
# batch to the tables, as before, let it scan all three for each batch). The attempts go
# here, counted: the trigger that frees the jobs' keys and ticks then leaves them alone
# (runledger.pruning, schema version 10).
GONE_JOB_EVENTS = """
delete from runledger.events as e
where e.job_id between %(first)s and %(last)s
  and exists (select from unnest(%(ids)s::uuid[]) as d (id) where d.id = e.job_id)
returning 1
"""
_DELETE_JOBS = """
with gone_events as ({events}),
gone_attempts as (
    delete from runledger.job_attempts as a
    where a.job_id between %(first)s and %(last)s
      and exists (select from unnest(%(ids)s::uuid[]) as d (id) where d.id = a.job_id)
    returning 1
),
gone_jobs as (
    delete from runledger.job_history as j
    where j.id between %(first_history)s and %(last_history)s
      and exists (select from unnest(%(history)s::uuid[]) as d (id) where d.id = j.id)
    returning 1
)
select (select count(*) from gone_jobs),
       (select count(*) from gone_attempts),
       (select count(*) from gone_events)
"""
# When the events go with their segment (runledger.postgres.segments), a batch leaves them.
LEAVE_EVENTS = "select 1 where false"
DELETE_JOBS = _DELETE_JOBS.format(events=GONE_JOB_EVENTS)
DELETE_JOBS_LEAVING_EVENTS = _DELETE_JOBS.format(events=LEAVE_EVENTS)
DELETE_HOT_JOBS = "delete from only runledger.jobs where id = any(%(hot)s::uuid[])"

# Transaction-local: tells runledger.forget_deleted_jobs that the attempts of the jobs this
# statement deletes are already gone (schema version 10), so it does not look for them again.
PRUNING_ON = "select set_config('runledger.pruning', 'on', true)"
PRUNING_OFF = "select set_config('runledger.pruning', '', true)"

FIND_RUNS = """
select id
from runledger.workflow_runs
where status = %(status)s and finished_at < now() - %(keep)s::interval
order by finished_at
limit %(limit)s
"""

# Lock order step 1: the runs' jobs, ascending id.
LOCK_RUN_JOBS = """
select id from runledger.jobs where workflow_run_id = any(%(runs)s) order by id for update
"""

# Lock order step 3, re-checking under the lock that each run is still finished and old.
LOCK_RUNS = """
select id
from runledger.workflow_runs
where id = any(%(runs)s) and status = %(status)s and finished_at < now() - %(keep)s::interval
order by id
for update
"""

GONE_RUN_EVENTS = "delete from runledger.events where workflow_run_id = any(%(runs)s) returning 1"
_DELETE_RUNS = """
with gone_events as ({events}),
gone_attempts as (
    delete from runledger.job_attempts a
    using runledger.jobs j
    where a.job_id = j.id and j.workflow_run_id = any(%(runs)s)
    returning 1
),
gone_jobs as (
    delete from runledger.jobs where workflow_run_id = any(%(runs)s) returning 1
),
gone_runs as (
    delete from runledger.workflow_runs where id = any(%(runs)s) returning 1
)
select (select count(*) from gone_runs),
       (select count(*) from gone_jobs),
       (select count(*) from gone_attempts),
       (select count(*) from gone_events)
"""
DELETE_RUNS = _DELETE_RUNS.format(events=GONE_RUN_EVENTS)
DELETE_RUNS_LEAVING_EVENTS = _DELETE_RUNS.format(events=LEAVE_EVENTS)

# Events whose job and run are both gone (deleted by hand, or by a version that kept them),
# among the next window of events in id order. Ids grow with time, so the sweep is done for
# now once a window holds an event younger than the keep: it reads at most one window more.
SWEEP_EVENTS = """
with examined as (
    select id, job_id, workflow_run_id, occurred_at < now() - %(keep)s::interval as old
    from runledger.events
    where id > %(after)s
    order by id
    limit %(limit)s
),
gone as (
    delete from runledger.events e
    using examined x
    where e.id = x.id
      and x.old
      and (x.job_id is null
           or not exists (select from runledger.jobs j where j.id = x.job_id))
      and (x.workflow_run_id is null
           or not exists (select from runledger.workflow_runs r where r.id = x.workflow_run_id))
    returning 1
)
select (select count(*) from gone),
       (select max(id) from examined),
       (select count(*) from examined),
       (select count(*) from examined where old)
"""

COUNT_JOBS = """
select count(*),
       coalesce(sum((select count(*) from runledger.job_attempts a where a.job_id = j.id)), 0),
       coalesce(sum((select count(*) from runledger.events e where e.job_id = j.id)), 0)
from runledger.jobs j
where status = %(status)s
  and finished_at < now() - %(keep)s::interval
  and workflow_run_id is null
"""

COUNT_RUNS = """
with runs as (
    select id
    from runledger.workflow_runs
    where status = %(status)s and finished_at < now() - %(keep)s::interval
)
select (select count(*) from runs),
       (select count(*) from runledger.jobs where workflow_run_id in (select id from runs)),
       (select count(*)
        from runledger.job_attempts a join runledger.jobs j on j.id = a.job_id
        where j.workflow_run_id in (select id from runs)),
       (select count(*) from runledger.events where workflow_run_id in (select id from runs))
"""


@attrs.frozen(kw_only=True)
class Pruned:
    """What one batch (or a sum of batches) deleted, or would delete.

    Attributes:
        jobs: standalone jobs.
        runs: workflow runs (their steps and edges go with them).
        run_jobs: the jobs of those runs.
        attempts: attempts of all those jobs.
        events: events of those jobs and runs, and orphan events.
        locked: False when another pruner held the lock and this batch did nothing.
    """

    jobs: int = 0
    runs: int = 0
    run_jobs: int = 0
    attempts: int = 0
    events: int = 0
    locked: bool = True

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            jobs=self.jobs + other.jobs,
            runs=self.runs + other.runs,
            run_jobs=self.run_jobs + other.run_jobs,
            attempts=self.attempts + other.attempts,
            events=self.events + other.events,
            locked=self.locked and other.locked,
        )

    @property
    def rows(self) -> int:
        """Every row counted (steps and edges of runs aside)."""
        return self.jobs + self.runs + self.run_jobs + self.attempts + self.events


def _take_lock(conn: Conn) -> bool:
    row = conn.execute(TRY_LOCK, {"key": PRUNE_LOCK_KEY}).fetchone()
    if not row or not row[0]:
        return False
    conn.execute(LOCK_TIMEOUT)
    return True


def prune_jobs(
    conn: Conn,
    status: JobStatus,
    keep: datetime.timedelta,
    *,
    limit: int = JOB_BATCH,
    events: bool = True,
) -> Pruned:
    """Delete up to ``limit`` standalone jobs that finished in ``status`` more than ``keep``
    ago, oldest first, with their attempts and events (``events=False`` leaves the events to
    go with their segment: ``runledger.postgres.segments``).

    Runs in the caller's transaction (commit it to make the deletion stick); skips rows that
    others hold. Blocks at most about a second on a lock (then raises psycopg's
    ``LockNotAvailable`` and the caller rolls back).
    """
    if not _take_lock(conn):
        return Pruned(locked=False)
    due = conn.execute(
        LOCK_DUE_JOBS, {"status": str(status), "keep": keep, "limit": limit}
    ).fetchall()
    if not due:
        return Pruned()
    history = sorted(job_id for job_id, in_history in due if in_history)
    hot = sorted(job_id for job_id, in_history in due if not in_history)
    ids = sorted(history + hot)
    conn.execute(PRUNING_ON)
    row = conn.execute(
        DELETE_JOBS if events else DELETE_JOBS_LEAVING_EVENTS,
        {
            "ids": ids,
            "first": ids[0],
            "last": ids[-1],
            "history": history,
            # an empty range when every job of the batch is in the hot table
            "first_history": history[0] if history else None,
            "last_history": history[-1] if history else None,
        },
    ).fetchone()
    assert row is not None
    jobs = row[0]
    if hot:
        jobs += conn.execute(DELETE_HOT_JOBS, {"hot": hot}).rowcount
    conn.execute(PRUNING_OFF)
    return Pruned(jobs=jobs, attempts=row[1], events=row[2])


def prune_runs(
    conn: Conn,
    status: JobStatus,
    keep: datetime.timedelta,
    *,
    limit: int = RUN_BATCH,
    events: bool = True,
) -> Pruned:
    """Delete up to ``limit`` workflow runs that finished in the run state matching ``status``
    (``RUN_STATUS_OF``) more than ``keep`` ago, oldest first, with their steps, jobs,
    attempts and events (``events=False`` leaves the events to go with their segment).

    Runs in the caller's transaction; takes the runs' jobs, then the runs, in the ledger's
    lock order. Blocks at most about a second on a lock (then raises psycopg's
    ``LockNotAvailable`` and the caller rolls back).
    """
    if not _take_lock(conn):
        return Pruned(locked=False)
    params = {"status": str(RUN_STATUS_OF[status]), "keep": keep, "limit": limit}
    candidates = [row[0] for row in conn.execute(FIND_RUNS, params).fetchall()]
    if not candidates:
        return Pruned()
    conn.execute(LOCK_RUN_JOBS, {"runs": candidates})
    runs: list[uuid.UUID] = [
        row[0] for row in conn.execute(LOCK_RUNS, {**params, "runs": candidates}).fetchall()
    ]
    if not runs:
        return Pruned()
    conn.execute(PRUNING_ON)  # DELETE_RUNS deletes the jobs' attempts itself
    statement = DELETE_RUNS if events else DELETE_RUNS_LEAVING_EVENTS
    row = conn.execute(statement, {"runs": runs}).fetchone()
    conn.execute(PRUNING_OFF)
    assert row is not None
    return Pruned(runs=row[0], run_jobs=row[1], attempts=row[2], events=row[3])


@attrs.frozen(kw_only=True)
class Swept:
    """One window of the orphan-event sweep.

    Attributes:
        next_after: where the next window starts (0 once the sweep passed the newest event).
        deleted: orphan events deleted.
        locked: False when another pruner held the lock (nothing was examined).
    """

    next_after: int
    deleted: int
    locked: bool = True


def sweep_orphan_events(
    conn: Conn, keep: datetime.timedelta, *, after: int = 0, limit: int = EVENT_WINDOW
) -> Swept:
    """Delete the orphan events (neither their job nor their run exists) older than ``keep``
    among the next ``limit`` events after id ``after``.

    Runs in the caller's transaction; reads at most ``limit`` events. Start at 0 and pass each
    result's ``next_after`` to the next call; it comes back to 0 once a window reaches the
    newest event or events younger than ``keep``.
    """
    if not _take_lock(conn):
        return Swept(next_after=after, deleted=0, locked=False)
    row = conn.execute(SWEEP_EVENTS, {"after": after, "keep": keep, "limit": limit}).fetchone()
    assert row is not None
    deleted, last_id, examined, old = row
    done = examined == 0 or old < examined
    return Swept(next_after=0 if done else last_id, deleted=deleted)


def count_prunable(conn: Conn, status: JobStatus, keep: datetime.timedelta) -> Pruned:
    """What pruning ``status`` older than ``keep`` would delete now (orphan events aside).

    Reads only; one scan of the finished jobs and runs in that state.
    """
    params = {"status": str(status), "keep": keep}
    jobs = conn.execute(COUNT_JOBS, params).fetchone()
    runs = conn.execute(COUNT_RUNS, {**params, "status": str(RUN_STATUS_OF[status])}).fetchone()
    assert jobs is not None and runs is not None
    return Pruned(
        jobs=jobs[0],
        attempts=jobs[1] + runs[2],
        events=jobs[2] + runs[3],
        runs=runs[0],
        run_jobs=runs[1],
    )
