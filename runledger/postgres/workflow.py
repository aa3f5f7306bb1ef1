"""The workflow engine: step transitions, release of dependents, cascades and run status.

Everything here runs inside a transaction the caller opened (a job completion, a reap, a
cancel, an external completion); a step's outcome, its dependents' counters, the jobs of newly
released steps, cascaded cancellations and the run's counters and status commit together.

Lock order
==========
Every path that changes job, step or run rows takes row locks in this order and only in it:

1. ``runledger.jobs`` rows, ascending id (``... ORDER BY id FOR NO KEY UPDATE``);
2. ``runledger.workflow_step_runs`` rows: first the steps whose outcome is being written
   (ascending id), then the blocked steps that may change because of them, all in one
   ascending-id statement. Step ids grow in topological order (enqueue inserts them so), so
   this is also ancestors first;
3. ``runledger.workflow_runs`` rows, ascending id, last and briefly: the run row is only
   updated once per transaction, at its end, to apply counter deltas.

``runledger.schedules`` rows are independent of the above and come before any job insert.
Inserting a row takes FOR KEY SHARE locks on the rows its foreign keys point at (a released
job's run and step), which is why run rows are updated under FOR NO KEY UPDATE (compatible
with KEY SHARE) rather than FOR UPDATE.

Paths that cannot know every row up front obey the order by refusing to wait out of it:

- the claim takes jobs with ``SKIP LOCKED`` and never waits on a job row;
- the reaper takes expired jobs with ``SKIP LOCKED``;
- ``cancel_workflow`` locks the run's jobs, then its steps; a job released concurrently in
  between is locked ``NOWAIT`` and, if that fails, the whole cancel retries from a savepoint;
- ``retry_workflow`` (``runledger.postgres.rerun``) locks the jobs of the run's unsettled
  steps, then all its steps, then the run; a job it finds only then (one that moved to
  ``job_history`` while it waited) is locked ``NOWAIT``, retrying from a savepoint likewise.

Why no path serialises on the run row: completions of parallel steps lock only their own job
and step rows (disjoint) plus the dependents they touch; the run row is updated last with
counter deltas, so its lock is held only from that final UPDATE to COMMIT. A fan-in step is
locked by each of its prerequisites' completions in the same way, late in the transaction.
Completions written in batches apply one counter update per run per batch.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs

from runledger.core.payload import JsonValue, dumps
from runledger.core.status import ReleaseMode, RunStatus, StepKind, StepStatus
from runledger.postgres.channels import JOBS, RUNS
from runledger.postgres.connection import Conn
from runledger.postgres.ids import new_id

# With each step, its run's result step: read, not locked (the locking clause covers the
# FROM list only), and in this statement rather than one more round trip per batch.
LOCK_STEPS = """
select s.id, s.workflow_run_id, s.step_key, s.kind, s.status,
       (select r.result_step from runledger.workflow_runs as r where r.id = s.workflow_run_id)
from runledger.workflow_step_runs as s
where s.id = any(%(ids)s)
order by s.id
for no key update of s
"""

# The blocked descendants of the given steps, reached through blocked steps only: every step
# whose status or counter this transaction may change. Locked in id order.
LOCK_BLOCKED_DESCENDANTS = """
with recursive reach(id) as (
    select d.step_id
    from runledger.workflow_step_deps as d
    where d.prerequisite_id = any(%(ids)s)
    union
    select d.step_id
    from runledger.workflow_step_deps as d
    join reach as r on d.prerequisite_id = r.id
    join runledger.workflow_step_runs as s on s.id = r.id and s.status = 'blocked'
)
select s.id, s.workflow_run_id, s.step_key, s.kind, s.deps_pending, s.job_type, s.queue,
       s.priority, s.max_attempts, s.timeout_seconds, s.payload
from runledger.workflow_step_runs as s
where s.id in (select id from reach) and s.status = 'blocked'
order by s.id
for no key update
"""

# Only edges that can matter now: into the locked blocked steps, from a step finishing in this
# transaction or from another locked step (which may be cancelled by the cascade). A fan-in
# step with a thousand prerequisites thus reads a few edges per completion, not a thousand.
EDGES_INTO = """
select step_id, prerequisite_id, release_mode
from runledger.workflow_step_deps
where step_id = any(%(ids)s)
  and (prerequisite_id = any(%(finished)s) or prerequisite_id = any(%(ids)s))
"""

UPDATE_STEPS = """
with u as (
    select *
    from unnest(%(ids)s::bigint[], %(statuses)s::text[], %(outputs)s::jsonb[],
                %(errors)s::text[], %(pending)s::integer[], %(job_ids)s::uuid[])
        as u(id, status, output, error, deps_pending, job_id)
)
update runledger.workflow_step_runs as s
set status = u.status,
    output = coalesce(u.output, s.output),
    error = coalesce(u.error, s.error),
    deps_pending = coalesce(u.deps_pending, s.deps_pending),
    job_id = coalesce(u.job_id, s.job_id),
    finished_at = case when u.status in ('succeeded', 'failed', 'cancelled')
                       then now() else s.finished_at end,
    posted_at = case when s.kind = 'external' and u.status in ('succeeded', 'failed')
                     then now() else s.posted_at end,
    updated_at = now()
from u
where s.id = u.id
"""

INSERT_STEP_JOBS = f"""
with input as (
    select *
    from unnest(%(ids)s::uuid[], %(queues)s::text[], %(job_types)s::text[],
                %(payloads)s::jsonb[], %(priorities)s::smallint[], %(max_attempts)s::integer[],
                %(timeouts)s::integer[], %(run_ids)s::uuid[], %(step_ids)s::bigint[],
                %(step_keys)s::text[])
        as t(id, queue, job_type, payload, priority, max_attempts, timeout_seconds,
             workflow_run_id, step_id, step_key)
),
inserted as (
    insert into runledger.jobs (
        id, queue, job_type, payload, priority, max_attempts, timeout_seconds,
        workflow_run_id, step_id, step_key, trace_context, concurrency_key, concurrency_limit)
    select i.id, i.queue, i.job_type, i.payload, i.priority, i.max_attempts,
           i.timeout_seconds, i.workflow_run_id, i.step_id, i.step_key,
           -- the trace of enqueue_workflow continues in every step (read, not locked)
           (select r.trace_context from runledger.workflow_runs as r
            where r.id = i.workflow_run_id),
           -- the step's concurrency key and limit, resolved at enqueue (schema 9)
           s.concurrency_key, s.concurrency_limit
    from input as i
    join runledger.workflow_step_runs as s on s.id = i.step_id
    returning id, queue, workflow_run_id, step_key
),
events as (
    insert into runledger.events (kind, job_id, workflow_run_id, step_key)
    select 'job.enqueued', id, workflow_run_id, step_key from inserted
)
select count(pg_notify('{JOBS}', queue))
from (select distinct queue from inserted) as q
"""

INSERT_EVENTS = """
insert into runledger.events (kind, job_id, workflow_run_id, step_key, data)
select * from unnest(%(kinds)s::text[], %(job_ids)s::uuid[], %(run_ids)s::uuid[],
                     %(step_keys)s::text[], %(data)s::jsonb[])
"""

# Counter deltas per run, applied last (lock order step 3). The status follows from the
# counters: no open step left -> finished; no job step queued or running -> waiting. The run
# row is locked FOR NO KEY UPDATE, which does not conflict with the FOR KEY SHARE locks that
# inserting a released job (whose foreign key points at the run) takes earlier.
UPDATE_RUNS = """
with locked as (
    select id, status as old_status
    from runledger.workflow_runs
    where id = any(%(ids)s)
    order by id
    for no key update
),
u as (
    select *
    from unnest(%(ids)s::uuid[], %(open)s::integer[], %(active)s::integer[],
                %(unsuccessful)s::integer[], %(results)s::jsonb[], %(has_result)s::boolean[])
        as u(id, open, active, unsuccessful, result, has_result)
),
updated as (
    -- The deltas apply to r.*, the row version the UPDATE itself locked and re-read, never to
    -- a snapshot taken before waiting for the lock (that would lose concurrent deltas).
    update runledger.workflow_runs as r
    set steps_open = r.steps_open + u.open,
        steps_active = r.steps_active + u.active,
        steps_unsuccessful = r.steps_unsuccessful + u.unsuccessful,
        result = case when u.has_result then u.result else r.result end,
        status = case
            when r.steps_open + u.open = 0 and r.steps_unsuccessful + u.unsuccessful = 0
                then 'succeeded'
            when r.steps_open + u.open = 0 then 'completed_with_errors'
            when r.steps_active + u.active = 0 then 'waiting'
            else 'running' end,
        finished_at = case when r.steps_open + u.open = 0 then now() end,
        updated_at = now()
    from u, locked as l
    where r.id = u.id and l.id = r.id and r.status in ('running', 'waiting')
    returning r.id, r.status
)
select u.id, l.old_status, u.status
from updated as u
join locked as l using (id)
"""


@attrs.frozen(kw_only=True)
class StepOutcome:
    """A step reaching an outcome in this transaction (its job finished, or a signal came)."""

    step_id: int
    status: StepStatus
    output: JsonValue = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class StepChange:
    """One step transition written by ``advance``; the runtime turns these into hooks."""

    run_id: uuid.UUID
    step_key: str
    status: StepStatus
    job_id: uuid.UUID | None = None


@attrs.frozen(kw_only=True)
class RunChange:
    """A run whose status changed in this transaction."""

    run_id: uuid.UUID
    old_status: RunStatus
    status: RunStatus


@attrs.frozen(kw_only=True)
class Advance:
    """What ``advance`` wrote."""

    steps: tuple[StepChange, ...] = ()
    runs: tuple[RunChange, ...] = ()


@attrs.define
class _RunDelta:
    open: int = 0
    active: int = 0
    unsuccessful: int = 0
    result: JsonValue = None
    has_result: bool = False


_TERMINAL = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED})


def advance(conn: Conn, outcomes: Sequence[StepOutcome]) -> Advance:
    """Write step outcomes and everything that follows from them, in the caller's transaction.

    Steps already terminal are left alone (a cancel got there first). For each new outcome:
    dependents' counters drop; dependents whose counter reaches zero are released (a job row
    for a job step, ``waiting`` for an external one); dependents of a failed or cancelled
    success-prerequisite are cancelled, transitively; the runs' counters and statuses follow.
    """
    if not outcomes:
        return Advance()
    by_id = {o.step_id: o for o in outcomes}
    locked = conn.execute(LOCK_STEPS, {"ids": sorted(by_id)}, prepare=False).fetchall()
    finished: dict[int, StepStatus] = {}
    deltas: dict[uuid.UUID, _RunDelta] = defaultdict(_RunDelta)
    changes: list[StepChange] = []
    updates: list[tuple[int, str, JsonValue, str | None, int | None, uuid.UUID | None]] = []
    run_of: dict[int, uuid.UUID] = {}
    for step_id, run_id, step_key, kind, status, result_step in locked:
        outcome = by_id[step_id]
        if StepStatus(status) in _TERMINAL:
            continue
        finished[step_id] = outcome.status
        run_of[step_id] = run_id
        updates.append((step_id, str(outcome.status), outcome.output, outcome.error, None, None))
        delta = deltas[run_id]
        delta.open -= 1
        if kind == StepKind.JOB and status in (StepStatus.QUEUED, StepStatus.RUNNING):
            delta.active -= 1
        if outcome.status is not StepStatus.SUCCEEDED:
            delta.unsuccessful += 1
        elif result_step == step_key:
            delta.result, delta.has_result = outcome.output, True
        changes.append(StepChange(run_id=run_id, step_key=step_key, status=outcome.status))

    releases = _cascade(conn, finished, deltas, changes, updates) if finished else []
    _write_steps(conn, updates)
    _write_step_events(conn, changes)  # a step's outcome is recorded before what it releases
    if releases:
        _insert_step_jobs(conn, releases)
    runs = _update_runs(conn, deltas)
    return Advance(steps=tuple(changes), runs=tuple(runs))


@attrs.frozen(kw_only=True)
class _Release:
    step_id: int
    run_id: uuid.UUID
    step_key: str
    job_id: uuid.UUID
    job_type: str
    queue: str
    priority: int
    max_attempts: int | None
    timeout_seconds: int | None
    payload: Any


def _cascade(
    conn: Conn,
    finished: dict[int, StepStatus],
    deltas: dict[uuid.UUID, _RunDelta],
    changes: list[StepChange],
    updates: list[tuple[int, str, JsonValue, str | None, int | None, uuid.UUID | None]],
) -> list[_Release]:
    """Decide and record what happens to the blocked descendants of the finished steps.

    Descendants are processed in id (= topological) order, so a step cancelled here is
    settled before any of its own dependents is looked at.
    """
    blocked = conn.execute(
        LOCK_BLOCKED_DESCENDANTS, {"ids": list(finished)}, prepare=False
    ).fetchall()
    if not blocked:
        return []
    edges: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for step_id, prerequisite_id, mode in conn.execute(
        EDGES_INTO, {"ids": [row[0] for row in blocked], "finished": list(finished)}, prepare=False
    ).fetchall():
        edges[step_id].append((prerequisite_id, mode))
    releases: list[_Release] = []
    for (
        step_id, run_id, step_key, kind, pending, job_type, queue, priority,
        max_attempts, timeout, payload,
    ) in blocked:  # fmt: skip
        released = 0
        doomed = False
        for prerequisite_id, mode in edges[step_id]:
            outcome = finished.get(prerequisite_id)
            if outcome is None:
                continue
            if mode == ReleaseMode.ON_SUCCESS and outcome is not StepStatus.SUCCEEDED:
                doomed = True
            else:
                released += 1
        if not doomed and not released:
            continue
        remaining = pending - released
        delta = deltas[run_id]
        if doomed:
            finished[step_id] = StepStatus.CANCELLED
            delta.open -= 1
            delta.unsuccessful += 1
            updates.append((step_id, str(StepStatus.CANCELLED), None,
                            "a prerequisite failed or was cancelled", remaining, None))  # fmt: skip
            changes.append(
                StepChange(run_id=run_id, step_key=step_key, status=StepStatus.CANCELLED)
            )
        elif remaining > 0:
            updates.append((step_id, str(StepStatus.BLOCKED), None, None, remaining, None))
        elif kind == StepKind.EXTERNAL:
            updates.append((step_id, str(StepStatus.WAITING), None, None, 0, None))
            changes.append(StepChange(run_id=run_id, step_key=step_key, status=StepStatus.WAITING))
        else:
            job_id = new_id()
            delta.active += 1
            updates.append((step_id, str(StepStatus.QUEUED), None, None, 0, job_id))
            changes.append(
                StepChange(
                    run_id=run_id, step_key=step_key, status=StepStatus.QUEUED, job_id=job_id
                )
            )
            releases.append(
                _Release(
                    step_id=step_id, run_id=run_id, step_key=step_key, job_id=job_id,
                    job_type=job_type, queue=queue, priority=priority,
                    max_attempts=max_attempts, timeout_seconds=timeout, payload=payload,
                )
            )  # fmt: skip
    return releases


def _write_steps(
    conn: Conn,
    updates: list[tuple[int, str, JsonValue, str | None, int | None, uuid.UUID | None]],
) -> None:
    if not updates:
        return
    conn.execute(
        UPDATE_STEPS,
        {
            "ids": [u[0] for u in updates],
            "statuses": [u[1] for u in updates],
            "outputs": [None if u[2] is None else dumps(u[2]) for u in updates],
            "errors": [u[3] for u in updates],
            "pending": [u[4] for u in updates],
            "job_ids": [u[5] for u in updates],
        },
        prepare=False,
    )


def _insert_step_jobs(conn: Conn, releases: list[_Release]) -> None:
    conn.execute(
        INSERT_STEP_JOBS,
        {
            "ids": [r.job_id for r in releases],
            "queues": [r.queue for r in releases],
            "job_types": [r.job_type for r in releases],
            "payloads": [dumps(r.payload if r.payload is not None else {}) for r in releases],
            "priorities": [r.priority for r in releases],
            "max_attempts": [r.max_attempts for r in releases],
            "timeouts": [r.timeout_seconds for r in releases],
            "run_ids": [r.run_id for r in releases],
            "step_ids": [r.step_id for r in releases],
            "step_keys": [r.step_key for r in releases],
        },
        prepare=False,
    )


def _write_step_events(conn: Conn, changes: list[StepChange]) -> None:
    if not changes:
        return
    write_events(
        conn,
        [(f"step.{c.status}", c.job_id, c.run_id, c.step_key, {}) for c in changes],
    )


def write_events(
    conn: Conn,
    events: Sequence[tuple[str, uuid.UUID | None, uuid.UUID | None, str | None, JsonValue]],
) -> None:
    """Append (kind, job_id, run_id, step_key, data) rows to ``runledger.events``."""
    if not events:
        return
    conn.execute(
        INSERT_EVENTS,
        {
            "kinds": [e[0] for e in events],
            "job_ids": [e[1] for e in events],
            "run_ids": [e[2] for e in events],
            "step_keys": [e[3] for e in events],
            "data": [dumps(e[4]) for e in events],
        },
        prepare=False,
    )


def _update_runs(conn: Conn, deltas: dict[uuid.UUID, _RunDelta]) -> list[RunChange]:
    if not deltas:
        return []
    ids = sorted(deltas)
    rows = conn.execute(
        UPDATE_RUNS,
        {
            "ids": ids,
            "open": [deltas[i].open for i in ids],
            "active": [deltas[i].active for i in ids],
            "unsuccessful": [deltas[i].unsuccessful for i in ids],
            "results": [dumps(deltas[i].result) if deltas[i].has_result else None for i in ids],
            "has_result": [deltas[i].has_result for i in ids],
        },
        prepare=False,
    ).fetchall()
    changes = [
        RunChange(run_id=row[0], old_status=RunStatus(row[1]), status=RunStatus(row[2]))
        for row in rows
        if row[1] != row[2]
    ]
    write_events(conn, [(_run_event(c), None, c.run_id, None, {}) for c in changes])
    finished = [c.run_id for c in changes if c.status.is_terminal]
    if finished:
        notify_runs(conn, finished)
    return changes


RUNS_CHANNEL = RUNS
"""A run reaching a final status NOTIFYs this channel with its id (``wait_for_run``)."""

NOTIFY_RUNS = f"select count(pg_notify('{RUNS}', id::text)) from unnest(%(ids)s::uuid[]) as id"


def notify_runs(conn: Conn, run_ids: Sequence[uuid.UUID]) -> None:
    """NOTIFY ``RUNS_CHANNEL`` for runs that finished in this transaction."""
    conn.execute(NOTIFY_RUNS, {"ids": list(run_ids)})


def _run_event(change: RunChange) -> str:
    if change.status is RunStatus.RUNNING:
        return "run.resumed"
    return f"run.{change.status}"
