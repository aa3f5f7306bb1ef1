"""Attempts: claim, lease renewal, finishing, release at shutdown and reaping expired leases.

Statements that take arrays of ids run unprepared (``prepare=False``), because a generic plan
guesses ten rows per array and its nested loops crawl on large batches; a finish of at most
``PREPARED_FINISH_BATCH`` attempts (the usual batch) is prepared, because there planning costs
more than the guess. The claim is written so that its generic plan stays on indexes whatever
the limit, and ``claim`` asks for it (``SET LOCAL plan_cache_mode``; the runtime's claimer sets
it once per session, see ``runledger.postgres.held``) so that it is planned once per
connection. It also turns JIT compilation off for the claim: a generic plan costs its
``LIMIT`` parameter as a tenth of the queued rows, so its estimated cost grows with the queue's
depth although its work does not, and past ``jit_above_cost`` every execution compiled the
plan's expressions again (26 ms of a 29 ms claim at a million jobs queued, 0.48 s at two
million, PostgreSQL 15). The measurements: ``benchmarks/README.md``, "Why the code is shaped
so".

Every write about an attempt after its claim is a compare-and-set on (job id, lease token,
status running); a write that matches nothing means the lease was lost (reaped, cancelled)
and is dropped by the caller, never retried. Job rows are always locked in id order, first
(see the lock order in ``runledger.postgres.workflow``).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence

import attrs
import psycopg

from runledger.core.payload import JsonValue, dumps
from runledger.core.status import AttemptOutcome, JobStatus, RetryReason, StepStatus
from runledger.postgres.channels import JOBS
from runledger.postgres.connection import Conn
from runledger.postgres.sqltext import compact, positional
from runledger.postgres.workflow import Advance, StepOutcome, advance

DEFAULT_MAX_ATTEMPTS = 5
"""Attempts a job gets when neither the job nor its handler says."""

# Claims up to %(limit)s due jobs of the given queues and types: highest priority first, then
# oldest run_at, then id. SKIP LOCKED: a claim never waits for a job row. With several
# queues, rows locked beyond the limit stay locked (unclaimed) only until the commit. The
# step rows of claimed workflow jobs are marked running in the same statement.
#
# Two statements share this text. Both first read one gate: whether flow control (schema 9,
# docs/flow-control.md) touches any queue claimed, by a pause or a limit on it or a keyed job
# queued in it (jobs_queued_keys, schema 11). CLAIM_PLAIN claims by the scan of the release
# before flow control, and claims nothing when the gate is shut; CLAIM_JOBS, correct whatever
# the gate, does not scan paused queues, passes over jobs of full keys, and claims candidates
# with a key or on a limited queue only as runledger.admit_jobs admits them. They are two
# statements, not two branches of one, because the server initialises every node of a plan
# at every execution, run or not: the flow-control nodes cost a plain claim 70 us each time.
# Both end in one row at least: (null job, flow_control) when nothing is claimed.
_GATE = """
gate as (
    select not exists (
               select from runledger.queues as s
               where s.queue = any(%(queues)s::text[])
                 and (s.paused or s.concurrency is not null or s.rate is not null))
           and not exists (
               select from only runledger.jobs as j
               where j.status = 'queued' and j.concurrency_key is not null
                 and j.queue = any(%(queues)s::text[])) as plain
),
"""
_PLAIN_CANDIDATES = """
admitted as (
    -- One ordered index scan per queue (a "queue = any(...)" filter would sort every queued
    -- row), then the best of them across queues.
    select c.id, c.priority, c.run_at
    from unnest(%(queues)s::text[]) as q(queue)
    cross join lateral (
        select j.id, j.priority, j.run_at
        from only runledger.jobs as j
        where j.status = 'queued'
          and j.queue = q.queue
          and j.job_type = any(%(job_types)s::text[])
          and j.run_at <= now()
        order by j.priority desc, j.run_at, j.id
        limit %(limit)s
        for no key update skip locked
    ) as c
    where (select g.plain from gate as g)
    order by c.priority desc, c.run_at, c.id
    limit %(limit)s
),
"""
_FLOW_CANDIDATES = """
candidates as (
    -- One ordered index scan per queue (a "queue = any(...)" filter would sort every queued
    -- row), then the best of them across queues. A job whose key is full is passed over, so
    -- that it never holds back the jobs behind it.
    select c.id, c.priority, c.run_at, c.queue, c.concurrency_key, c.concurrency_limit,
           q.limited
    from (
        -- The queues to scan: not paused, and not full as this statement's snapshot sees them
        -- (a plain read: admit_jobs decides exactly). One index probe per queue; a queue without
        -- a row in runledger.queues has no limit.
        select q.queue, s.queue is not null and (s.concurrency is not null or s.rate is not null)
                   as limited
        from unnest(%(queues)s::text[]) as q(queue)
        left join runledger.queues as s on s.queue = q.queue
        where s.queue is null
           or not (s.paused
                   -- the rate window of this claim's now() is full, or a later one opened
                   or coalesce((s.window_start, s.window_starts) >= (to_timestamp(
                          floor(extract(epoch from now()) / s.per_seconds::numeric)
                          * s.per_seconds::numeric), s.rate), false)
                   or case when s.concurrency is null then false else s.concurrency <= (
                          select count(*) from only runledger.jobs as r
                          where r.queue = s.queue and r.status = 'running') end)
    ) as q
    cross join lateral (
        select j.id, j.priority, j.run_at, j.queue, j.concurrency_key, j.concurrency_limit
        from only runledger.jobs as j
        where j.status = 'queued'
          and j.queue = q.queue
          and j.job_type = any(%(job_types)s::text[])
          and j.run_at <= now()
          -- (key, limit) pairs of the full keys: a key with n running jobs is full for
          -- the limits 1..n. Read once per claim (a hashed subplan, built the first time a
          -- keyed job is met) from jobs_running_keys, then one hash probe per keyed row.
          and (j.concurrency_key is null
               or (j.concurrency_key, j.concurrency_limit) not in (
                   select k.concurrency_key, n.n
                   from (select r.concurrency_key, count(*)::integer as running
                         from only runledger.jobs as r
                         where r.status = 'running' and r.concurrency_key is not null
                         group by r.concurrency_key) as k
                   cross join lateral generate_series(1, k.running) as n(n)))
        order by j.priority desc, j.run_at, j.id
        limit %(limit)s
        for no key update skip locked
    ) as c
    order by c.priority desc, c.run_at, c.id
    limit %(limit)s
),
constrained as (
    select array_agg(c.id order by c.priority desc, c.run_at, c.id) as ids,
           array_agg(c.queue order by c.priority desc, c.run_at, c.id) as queues,
           array_agg(c.concurrency_key order by c.priority desc, c.run_at, c.id) as keys,
           array_agg(c.concurrency_limit order by c.priority desc, c.run_at, c.id) as limits,
           array_agg(c.limited order by c.priority desc, c.run_at, c.id) as limited
    from candidates as c
    where c.limited or c.concurrency_key is not null
),
admitted as (
    -- Unconstrained candidates are claimed as they are; constrained ones as admit_jobs
    -- (schema 0009) admits them, under their queue's row lock and their keys' advisory locks.
    select c.id, c.priority, c.run_at
    from candidates as c
    where not (c.limited or c.concurrency_key is not null)
    union all
    select c.id, c.priority, c.run_at
    from constrained as k
    cross join lateral runledger.admit_jobs(k.ids, k.queues, k.keys, k.limits, k.limited)
        as a(id)
    join candidates as c on c.id = a.id
    where k.ids is not null
),
"""
_CLAIMED = """
claimed as (
    update only runledger.jobs as j
    set status = 'running',
        attempt = j.attempt + 1,
        max_attempts = coalesce(
            j.max_attempts,
            (%(defaults)s::jsonb -> j.job_type ->> 'max_attempts')::integer,
            %(default_max_attempts)s),
        timeout_seconds = coalesce(
            j.timeout_seconds, (%(defaults)s::jsonb -> j.job_type ->> 'timeout_seconds')::integer),
        lease_token = runledger.time_ordered_uuid(),
        lease_owner = %(worker)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        started_at = now(),
        -- the jobs idle threads start at once; the runtime marks the others (prefetched)
        -- when their handlers start (MARK_STARTED)
        handler_started_at = case when j.id = any(array(
            select c.id from admitted as c
            order by c.priority desc, c.run_at, c.id
            limit %(start_now)s)) then now() end,
        -- a claimed job may wait for a thread (prefetch): the heartbeat makes this exact
        deadline_at = now() + make_interval(secs => %(lease_seconds)s) + make_interval(
            secs => coalesce(
                j.timeout_seconds,
                (%(defaults)s::jsonb -> j.job_type ->> 'timeout_seconds')::integer)),
        updated_at = now()
    -- by primary key whatever the row estimate: the generic plan never guesses the limit
    where j.id = any(array(select c.id from admitted as c))
    returning j.id, j.job_type, j.queue, j.payload, j.priority, j.attempt, j.max_attempts,
              j.timeout_seconds, j.lease_token, j.workflow_run_id, j.step_id, j.step_key,
              j.started_at, j.scheduled_at, j.handler_started_at is not null as started,
              j.trace_context, j.run_at
),
attempts as (
    insert into runledger.job_attempts (job_id, attempt, worker, lease_token, started_at)
    select id, attempt, %(worker)s, lease_token, started_at from claimed
),
steps as (
    update runledger.workflow_step_runs as s
    set status = 'running', updated_at = now()
    where s.id = any(array(select c.step_id from claimed as c where c.step_id is not null))
      and s.status = 'queued'
),
events as (
    insert into runledger.events (kind, job_id, workflow_run_id, step_key, attempt, data)
    select 'job.started', id, workflow_run_id, step_key, attempt,
           jsonb_build_object('worker', %(worker)s::text)
    from claimed
)
select c.id, c.job_type, c.queue, c.payload, c.priority, c.attempt, c.max_attempts,
       c.timeout_seconds, c.lease_token, c.workflow_run_id, c.step_id, c.step_key, c.started_at,
       (select r.input from runledger.workflow_runs as r where r.id = c.workflow_run_id)
           as workflow_input,
       c.scheduled_at,
       -- the outputs of the step's prerequisites, by step key (finished and committed before
       -- the step was released, so this statement's snapshot sees them)
       case when c.step_id is not null then (
           select jsonb_object_agg(d.prerequisite_key, p.output)
           from runledger.workflow_step_deps as d
           join runledger.workflow_step_runs as p on p.id = d.prerequisite_id
           where d.step_id = c.step_id
       ) end as upstream,
       c.started,
       c.trace_context,
       c.run_at,
       %(deferred)s as deferred,
       not g.plain as flow_control
-- one row even when nothing is claimed, so that the caller always reads the gate
from gate as g
left join claimed as c on true
order by c.priority desc, c.id
"""
CLAIM_PLAIN = compact("with" + _GATE + _PLAIN_CANDIDATES + _CLAIMED.replace("%(deferred)s", "0"))
CLAIM_JOBS = compact(
    "with"
    + _GATE
    + _FLOW_CANDIDATES
    + _CLAIMED.replace(
        "%(deferred)s",
        # candidates admit_jobs turned away (a key or queue full or being admitted by another
        # claim): the claimer claims again at once when it also got some
        "(select count(*) from candidates) - (select count(*) from admitted)",
    )
)
# Numbered once: the claims are longer than the texts psycopg caches its conversion of
# (sqltext).
CLAIM_PLAIN_STATEMENT = positional(CLAIM_PLAIN)
CLAIM_STATEMENT = positional(CLAIM_JOBS)

# Only for the rest of the caller's transaction, which commits right after the claim. JIT off:
# the generic plan's cost grows with the queue's depth (see the module's docstring), and a
# claim of a few dozen rows never gains from compiling its plan.
GENERIC_PLAN = (
    "select set_config('plan_cache_mode', 'force_generic_plan', true), "
    "set_config('jit', 'off', true)"
)
# The same for a whole session: the claimer's held connection (``session_generic_plan``).
GENERIC_PLAN_SESSION = {"plan_cache_mode": "force_generic_plan", "jit": "off"}

# Renews leases and moves attempt deadlines: ``remaining`` is the seconds the handler has left
# (its whole timeout while it waits for a thread), or null for no timeout. ``progress`` is the
# latest value the handler reported since the last renewal (null: none, keep the stored one):
# coalesced with the renewal rather than written per ctx.progress call.
RENEW_LEASES = """
with input as (
    select *
    from unnest(%(ids)s::uuid[], %(tokens)s::uuid[], %(remaining)s::float8[],
                %(progress)s::jsonb[])
        as u(id, token, remaining, progress)
),
locked as (
    select j.id
    from only runledger.jobs as j
    join input as u on j.id = u.id and j.lease_token = u.token
    where j.status = 'running'
    order by j.id
    for no key update of j
)
update only runledger.jobs as j
set lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    deadline_at = case when u.remaining is null then j.deadline_at
                       else now() + make_interval(secs => u.remaining) end,
    progress = coalesce(u.progress, j.progress)
from locked as l, input as u
where j.id = l.id and u.id = j.id and u.token = j.lease_token
returning j.id
"""

# Marks running attempts whose handlers started (they waited in a worker's prefetch); an
# attempt whose lease expires unmarked is released by the reaper without being counted.
MARK_STARTED = """
with input as (
    select * from unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) as u(id, token)
),
locked as (
    select j.id
    from only runledger.jobs as j
    join input as u on j.id = u.id and j.lease_token = u.token
    where j.status = 'running' and j.handler_started_at is null
    order by j.id
    for no key update of j
)
update only runledger.jobs as j
set handler_started_at = now()
from locked as l
where j.id = l.id
"""

FINISH_ATTEMPTS = compact(f"""
with input as (
    select *
    from unnest(
        %(ids)s::uuid[], %(tokens)s::uuid[], %(statuses)s::text[], %(outcomes)s::text[],
        %(outputs)s::jsonb[], %(error_types)s::text[], %(error_messages)s::text[],
        %(tracebacks)s::text[], %(delays)s::float8[], %(not_befores)s::timestamptz[],
        %(reasons)s::text[], %(progress)s::jsonb[]
    ) as u(id, token, status, outcome, output, error_type, error_message, traceback, delay,
           not_before, reason, progress)
),
locked as (
    select j.id
    from only runledger.jobs as j
    join input as u on u.id = j.id and j.lease_token = u.token
    where j.status = 'running'
    order by j.id
    for no key update of j
),
done as (
    update only runledger.jobs as j
    set status = u.status,
        output = case when u.status = 'succeeded' then u.output else j.output end,
        last_error = case when u.error_type is null then j.last_error
                          else u.error_type || ': ' || coalesce(u.error_message, '') end,
        run_at = case when u.status = 'queued'
                      then greatest(now() + make_interval(secs => coalesce(u.delay, 0)),
                                    coalesce(u.not_before, now()))
                      else j.run_at end,
        -- neither a release nor a snooze spends the attempt: the next claim reuses its number
        attempt = case when u.outcome in ('released', 'snoozed') then j.attempt - 1
                       else j.attempt end,
        progress = coalesce(u.progress, j.progress),
        lease_token = null,
        lease_owner = null,
        lease_expires_at = null,
        deadline_at = null,
        finished_at = case when u.status in ('succeeded', 'failed') then now() end,
        updated_at = now()
    from input as u, locked as l
    where j.id = u.id and l.id = j.id and j.lease_token = u.token
    returning j.id, j.status, j.run_at, j.attempt, j.workflow_run_id, j.step_id, j.step_key,
              j.job_type, j.queue, u.token, j.concurrency_key
),
attempts as (
    update runledger.job_attempts as a
    set finished_at = now(),
        outcome = u.outcome,
        error_type = u.error_type,
        error_message = u.error_message,
        error_traceback = u.traceback,
        retry_at = case when d.status = 'queued' and u.outcome <> 'released'
                        then d.run_at end,
        retry_reason = case when d.status = 'queued' and u.outcome <> 'released'
                            then coalesce(u.reason, 'policy') end
    from done as d
    join input as u on u.id = d.id
    where a.lease_token = d.token
),
events as (
    insert into runledger.events (kind, job_id, workflow_run_id, step_key, attempt, data)
    select case when u.outcome = 'released' then 'job.released'
                when u.outcome = 'snoozed' then 'job.snoozed'
                when d.status = 'succeeded' then 'job.succeeded'
                when d.status = 'queued' then 'job.retrying'
                else 'job.failed' end,
           d.id, d.workflow_run_id, d.step_key,
           -- a snoozed event names the attempt that snoozed, not the count after it
           d.attempt + (u.outcome = 'snoozed')::integer,
           case when d.status = 'succeeded' then '{{}}'::jsonb
                else jsonb_strip_nulls(jsonb_build_object(
                    'outcome', u.outcome, 'error_type', u.error_type,
                    'error', u.error_message,
                    'retry_at', case when d.status = 'queued' then d.run_at end,
                    'retry_reason', case when d.status = 'queued' then u.reason end)) end
    from done as d
    join input as u on u.id = d.id
),
steps as (
    update runledger.workflow_step_runs as s
    set status = 'queued', updated_at = now()
    from done as d
    where s.id = d.step_id and d.status = 'queued' and s.status = 'running'
),
notified as (
    -- Requeued jobs are claimable; finished jobs with a concurrency key, or of a queue with
    -- a concurrency limit, free a slot that other runtimes' claimers may be waiting for.
    select count(pg_notify('{JOBS}', queue)) as n
    from (select distinct queue from done
          where status = 'queued'
             or concurrency_key is not null
             or queue in (select q.queue from runledger.queues as q
                          where q.concurrency is not null)) as q
)
select d.id, d.status, d.workflow_run_id, d.step_id, d.step_key, d.attempt, d.job_type,
       d.run_at, d.token, (select n from notified) as notified
from done as d
""")

# The same statement under another text, so that psycopg prepares it apart from the large
# batches' unprepared one.
FINISH_FEW_ATTEMPTS = "-- a batch of few attempts: prepared\n" + FINISH_ATTEMPTS

PREPARED_FINISH_BATCH = 64
"""The largest finish that runs as a prepared statement."""

# The attempts a worker holds in the database but not in memory (``held``): those of a claim
# that committed while its connection broke, before the worker read which jobs it got.
ORPHANED_ATTEMPTS = """
select id, lease_token
from only runledger.jobs
where status = 'running'
  and lease_owner = %(worker)s
  and not (lease_token = any(%(held)s::uuid[]))
order by id
"""

# Running jobs whose lease expired or whose attempt outlived its timeout; SKIP LOCKED so the
# reaper never waits for (or overwrites) a completion in flight: the FOR UPDATE re-checks the
# conditions on the newest row version.
LOCK_EXPIRED = """
select id, lease_token, job_type, attempt, max_attempts,
       case when deadline_at < now() then 'timed_out' else 'lease_expired' end as outcome,
       queue,
       handler_started_at is not null as started,
       -- how often a crash has released it unstarted already (see UNCOUNTED_RELEASES)
       case when handler_started_at is null then (
           select count(*) from runledger.job_attempts as a
           where a.job_id = jobs.id and a.outcome = 'released' and a.error_type = 'LeaseExpired'
       ) else 0 end as crash_releases
from only runledger.jobs
where status = 'running'
  and (lease_expires_at < now() or deadline_at < now())
order by id
limit %(limit)s
for no key update skip locked
"""


@attrs.frozen(kw_only=True)
class ClaimedJob:
    """A job this worker holds the lease of; everything a handler's context needs."""

    id: uuid.UUID
    job_type: str
    queue: str
    payload: JsonValue
    priority: int
    attempt: int
    max_attempts: int
    timeout_seconds: int | None
    lease_token: uuid.UUID
    workflow_run_id: uuid.UUID | None
    step_id: int | None
    step_key: str | None
    started_at: datetime.datetime
    workflow_input: JsonValue = None
    scheduled_at: datetime.datetime | None = None
    upstream: Mapping[str, JsonValue] = attrs.field(factory=dict)
    started: bool = False
    """Marked started by the claim itself (an idle thread runs it at once); otherwise the
    runtime marks it with ``mark_started`` once its handler starts."""
    trace_context: Mapping[str, str] | None = None
    run_at: datetime.datetime | None = None
    """When the job was due (its enqueue time unless delayed): ``started_at - run_at`` is
    how long it waited in the queue."""
    """The W3C trace context stored at enqueue (``traceparent``...), or None."""


def claim_params(
    *,
    worker: str,
    queues: Sequence[str],
    job_types: Sequence[str],
    limit: int,
    lease_seconds: float,
    defaults: Mapping[str, Mapping[str, int | None]] | None = None,
    start_now: int | None = None,
) -> dict[str, object]:
    """The parameters of ``CLAIM_JOBS`` and ``CLAIM_PLAIN`` for ``claim``'s arguments."""
    return {
        "start_now": limit if start_now is None else max(0, min(start_now, limit)),
        "queues": list(queues),
        "job_types": list(job_types),
        "limit": limit,
        "worker": worker,
        "lease_seconds": float(lease_seconds),
        "defaults": dumps(defaults or {}),
        "default_max_attempts": DEFAULT_MAX_ATTEMPTS,
    }


@attrs.frozen(kw_only=True)
class Claim:
    """What one claim got: its jobs in the order to run them, and how many candidates the
    admission of constrained jobs turned away (a key or queue full, or locked by another
    claim's admission): when some were, jobs behind them may be claimable at once."""

    jobs: tuple[ClaimedJob, ...]
    deferred: int
    flow_control: bool = False
    """Whether flow control touched the queues claimed (a pause, a limit or a keyed job
    queued): pass it to the next ``claim_round`` of the same queues."""


def claim(
    conn: Conn,
    *,
    worker: str,
    queues: Sequence[str],
    job_types: Sequence[str],
    limit: int,
    lease_seconds: float,
    defaults: Mapping[str, Mapping[str, int | None]] | None = None,
    session_generic_plan: bool = False,
    start_now: int | None = None,
) -> list[ClaimedJob]:
    """``claim_round``'s jobs alone (same transaction, blocking and errors)."""
    return list(
        claim_round(
            conn, worker=worker, queues=queues, job_types=job_types, limit=limit,
            lease_seconds=lease_seconds, defaults=defaults,
            session_generic_plan=session_generic_plan, start_now=start_now,
        ).jobs
    )  # fmt: skip


def claim_round(
    conn: Conn,
    *,
    worker: str,
    queues: Sequence[str],
    job_types: Sequence[str],
    limit: int,
    lease_seconds: float,
    defaults: Mapping[str, Mapping[str, int | None]] | None = None,
    session_generic_plan: bool = False,
    start_now: int | None = None,
    flow_control: bool = False,
) -> Claim:
    """Claim up to ``limit`` due jobs in the caller's transaction (commit it before running).

    The first ``start_now`` of them (all by default) are marked as started: their handlers
    run at once. The others are expected to wait for a thread, and to be marked by
    ``mark_started`` when they start; a lease that expires before that is released by the
    reaper without counting the attempt. Jobs come back in the order to run them, the ones
    marked first.

    Opens an attempt row, a fresh lease token and a ``job.started`` event for each, marks
    workflow steps running and loads each step's upstream outputs. Never waits for a job row
    (SKIP LOCKED); it can wait for a step row that a ``cancel_workflow`` holds. On a
    connection that prepares statements, sets ``plan_cache_mode`` to
    ``force_generic_plan`` and ``jit`` to ``off`` for the rest of the transaction (see the
    module's docstring), unless ``session_generic_plan`` says the session has those settings
    already. On an autocommit connection the claim commits by itself and only a session
    setting can apply (``SET LOCAL`` outside a transaction does nothing but warn), so none is
    made.

    Jobs with a concurrency key, and jobs of queues with a concurrency or rate limit, are
    admitted by ``runledger.admit_jobs`` in the same statement (see ``docs/flow-control.md``);
    paused queues are not scanned. ``Claim.deferred`` counts the candidates it turned away.
    When flow control touches none of ``queues`` the claim takes one plain statement; when it
    does, that statement claims nothing and the flow-control claim follows. ``flow_control``
    (the last claim's ``Claim.flow_control``) sends the flow-control claim first: a claimer of
    limited queues spares the plain statement's round trip.
    The transaction must be READ COMMITTED (the default) when any are constrained: a claim
    in a REPEATABLE READ or SERIALIZABLE transaction raises psycopg's
    ``InvalidTransactionState`` (SQLSTATE 25000) rather than count running jobs with a stale
    snapshot.
    """
    if limit <= 0:
        return Claim(jobs=(), deferred=0)
    if conn.prepare_threshold is not None and not (session_generic_plan or conn.autocommit):
        conn.execute(GENERIC_PLAN, prepare=False)
    params = claim_params(
        worker=worker,
        queues=queues,
        job_types=job_types,
        limit=limit,
        lease_seconds=lease_seconds,
        defaults=defaults,
        start_now=start_now,
    )
    with psycopg.RawCursor(conn) as cursor:
        statement = CLAIM_STATEMENT if flow_control else CLAIM_PLAIN_STATEMENT
        rows = cursor.execute(statement.text, statement.args(params)).fetchall()
        if rows[0][20] and not flow_control:
            # Flow control touches a queue: the plain statement claimed nothing.
            rows = cursor.execute(CLAIM_STATEMENT.text, CLAIM_STATEMENT.args(params)).fetchall()
    jobs = [
        ClaimedJob(
            id=row[0],
            job_type=row[1],
            queue=row[2],
            payload=row[3],
            priority=row[4],
            attempt=row[5],
            max_attempts=row[6],
            timeout_seconds=row[7],
            lease_token=row[8],
            workflow_run_id=row[9],
            step_id=row[10],
            step_key=row[11],
            started_at=row[12],
            workflow_input=row[13],
            scheduled_at=row[14],
            upstream=row[15] or {},
            started=row[16],
            trace_context=row[17],
            run_at=row[18],
        )
        for row in rows
        if row[0] is not None
    ]
    return Claim(
        jobs=tuple(sorted(jobs, key=lambda job: not job.started)),
        deferred=rows[0][19] or 0,
        flow_control=rows[0][20],
    )


def mark_started(conn: Conn, attempts: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Record that the handlers of these (job id, lease token) attempts started, in the
    caller's transaction (one statement). Attempts no longer held are skipped."""
    if not attempts:
        return
    conn.execute(
        MARK_STARTED,
        {"ids": [a[0] for a in attempts], "tokens": [a[1] for a in attempts]},
        prepare=False,
    )


def renew_leases(
    conn: Conn,
    leases: Sequence[tuple[uuid.UUID, uuid.UUID, float | None]],
    *,
    lease_seconds: float,
    progress: Mapping[uuid.UUID, str] | None = None,
) -> set[uuid.UUID]:
    """Extend (job id, lease token, seconds left before the timeout or None) leases and set
    their deadlines; return the job ids whose lease is still held.

    ``progress`` maps lease tokens to the JSON text of the progress to store with the renewal
    (see ``runledger.core.progress``); a lease without one keeps the stored progress. One
    statement in the caller's transaction.
    """
    if not leases:
        return set()
    progress = progress or {}
    rows = conn.execute(
        RENEW_LEASES,
        {
            "ids": [lease[0] for lease in leases],
            "tokens": [lease[1] for lease in leases],
            "remaining": [lease[2] for lease in leases],
            "progress": [progress.get(lease[1]) for lease in leases],
            "lease_seconds": float(lease_seconds),
        },
        prepare=False,
    ).fetchall()
    return {row[0] for row in rows}


@attrs.frozen(kw_only=True)
class AttemptResult:
    """How an attempt ended, to be written by ``finish``.

    ``status`` is the job's next status: ``succeeded``, ``queued`` (retry later, or put back
    without counting the attempt when ``outcome`` is ``released`` or ``snoozed``) or
    ``failed``. ``progress`` is the JSON text of the handler's latest progress, stored with
    the outcome (None keeps the stored value).
    """

    job_id: uuid.UUID
    lease_token: uuid.UUID
    status: JobStatus
    outcome: AttemptOutcome
    output: JsonValue = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    retry_delay: float = 0.0
    retry_not_before: datetime.datetime | None = None
    retry_reason: RetryReason | None = None
    progress: str | None = None


@attrs.frozen(kw_only=True)
class Finished:
    """An attempt result that was written (its lease was still held)."""

    job_id: uuid.UUID
    lease_token: uuid.UUID
    status: JobStatus
    attempt: int
    job_type: str
    workflow_run_id: uuid.UUID | None
    step_key: str | None
    run_at: datetime.datetime


@attrs.frozen(kw_only=True)
class FinishReport:
    """What ``finish`` wrote: the results that held their lease, and the workflow effects."""

    finished: tuple[Finished, ...]
    lost: tuple[uuid.UUID, ...]
    workflow: Advance


def finish_params(results: Sequence[AttemptResult]) -> dict[str, list[object]]:
    """The parameters of ``FINISH_ATTEMPTS`` (either text) for ``results``."""
    return {
        "ids": [r.job_id for r in results],
        "tokens": [r.lease_token for r in results],
        "statuses": [str(r.status) for r in results],
        "outcomes": [str(r.outcome) for r in results],
        "outputs": [None if r.output is None else dumps(r.output) for r in results],
        "error_types": [r.error_type for r in results],
        "error_messages": [r.error_message for r in results],
        "tracebacks": [r.traceback for r in results],
        "delays": [r.retry_delay for r in results],
        "not_befores": [r.retry_not_before for r in results],
        "reasons": [None if r.retry_reason is None else str(r.retry_reason) for r in results],
        "progress": [r.progress for r in results],
    }


def finish(conn: Conn, results: Sequence[AttemptResult]) -> FinishReport:
    """Write attempt results in the caller's transaction, fenced on their leases.

    Results whose lease is no longer held are skipped and listed in ``lost``. Terminal job
    outcomes of workflow steps advance their workflows in the same transaction.
    """
    if not results:
        return FinishReport(finished=(), lost=(), workflow=Advance())
    few = len(results) <= PREPARED_FINISH_BATCH
    rows = conn.execute(
        FINISH_FEW_ATTEMPTS if few else FINISH_ATTEMPTS,
        finish_params(results),
        # None: as the connection's prepare_threshold says
        prepare=None if few else False,
    ).fetchall()
    by_token = {r.lease_token: r for r in results}
    finished: list[Finished] = []
    outcomes: list[StepOutcome] = []
    for job_id, status, run_id, step_id, step_key, attempt, job_type, run_at, token, _ in rows:
        job_status = JobStatus(status)
        finished.append(
            Finished(
                job_id=job_id,
                lease_token=token, status=job_status, attempt=attempt, job_type=job_type,
                workflow_run_id=run_id, step_key=step_key, run_at=run_at,
            )
        )  # fmt: skip
        if step_id is not None and job_status.is_terminal:
            result = by_token[token]
            outcomes.append(
                StepOutcome(
                    step_id=step_id,
                    status=StepStatus(str(job_status)),
                    output=result.output if job_status is JobStatus.SUCCEEDED else None,
                    error=_error_text(result),
                )
            )
    written = {row[8] for row in rows}
    lost = tuple(r.job_id for r in results if r.lease_token not in written)
    return FinishReport(finished=tuple(finished), lost=lost, workflow=advance(conn, outcomes))


def _error_text(result: AttemptResult) -> str | None:
    if result.error_type is None:
        return None
    return f"{result.error_type}: {result.error_message or ''}"


def orphaned_attempts(
    conn: Conn, *, worker: str, held: Sequence[uuid.UUID]
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(job id, lease token) of the running attempts leased to ``worker`` whose tokens are not
    in ``held``: jobs a claim gave it that it never learnt of."""
    rows = conn.execute(
        ORPHANED_ATTEMPTS, {"worker": worker, "held": list(held)}, prepare=False
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


@attrs.frozen(kw_only=True)
class Expired:
    """A running job the reaper took: its lease expired or it outlived its timeout."""

    id: uuid.UUID
    lease_token: uuid.UUID
    job_type: str
    attempt: int
    max_attempts: int
    outcome: AttemptOutcome
    started: bool = True
    """False if the attempt's handler never started (it waited in a worker's prefetch)."""
    crash_releases: int = 0
    """How many earlier attempts of the job a crash released before their handler started."""
    queue: str | None = None
    """The job's queue (``lock_expired`` always reads it; None only in a hand-made one)."""


def lock_expired(conn: Conn, *, limit: int = 100) -> list[Expired]:
    """Lock up to ``limit`` expired or timed-out running jobs (SKIP LOCKED), in id order."""
    rows = conn.execute(LOCK_EXPIRED, {"limit": limit}).fetchall()
    return [
        Expired(
            id=row[0],
            lease_token=row[1],
            job_type=row[2],
            attempt=row[3],
            max_attempts=row[4],
            outcome=AttemptOutcome(row[5]),
            queue=row[6],
            started=row[7],
            crash_releases=row[8],
        )
        for row in rows
    ]
