-- runledger 0001: the whole ledger schema.
--
-- Applied by runledger.postgres.migrate in one transaction under an advisory lock. Works on
-- PostgreSQL 13 and newer. Statuses are CHECKed text whose values mirror the StrEnums in
-- runledger.core.status (a test keeps both in sync); every other CHECK repeats a rule of
-- runledger.core so that rows written by hand obey it too.

create schema if not exists runledger;

-- Lease tokens: random like gen_random_uuid(), but led by the Unix milliseconds and marked
-- version 7 as in UUIDv7 (which PostgreSQL only generates itself from 18), so that successive
-- claims add their tokens at the right edge of job_attempts' unique index rather than on a
-- random page of it: every random page costs a cache miss, and a full-page image in the WAL
-- the first time it is touched after each checkpoint.
create function runledger.time_ordered_uuid() returns uuid
    language sql volatile parallel safe
as $$
    select overlay(gen_random_uuid()::text
                   placing regexp_replace(
                       lpad(to_hex((extract(epoch from clock_timestamp()) * 1000)::bigint),
                            12, '0'),
                       '^(.{8})', '\1-') || '-7'
                   from 1 for 15)::uuid
$$;

-- One row per workflow run. The step counters let a completion decide the run's status with
-- one UPDATE of this row at the end of its transaction instead of counting step rows.
create table runledger.workflow_runs (
    id                  uuid primary key,
    name                text not null check (btrim(name) <> ''),
    idempotency_key     text check (btrim(idempotency_key) <> ''),
    request_fingerprint text not null,
    input               jsonb not null default '{}'::jsonb,
    status              text not null default 'running'
        check (status in ('running', 'waiting', 'succeeded', 'completed_with_errors',
                          'cancelled')),
    result_step         text,
    result              jsonb,
    steps_total         integer not null check (steps_total > 0),
    -- steps not yet succeeded, failed or cancelled
    steps_open          integer not null,
    -- job steps queued or running: zero with steps still open means "waiting"
    steps_active        integer not null,
    -- steps that failed or were cancelled
    steps_unsuccessful  integer not null default 0,
    cancel_reason       text,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    finished_at         timestamptz,
    constraint workflow_runs_idempotency_key unique (name, idempotency_key),
    check (steps_open between 0 and steps_total),
    check (steps_active between 0 and steps_open),
    check (steps_unsuccessful between 0 and steps_total),
    check ((finished_at is null) = (status in ('running', 'waiting')))
);

-- One row per step of a run. Rows are inserted in topological order, so a step's id is larger
-- than the ids of all its prerequisites; locking step rows in id order is therefore also
-- locking them ancestors-first (see the lock order in runledger/postgres/workflow.py).
create table runledger.workflow_step_runs (
    id              bigint generated always as identity primary key,
    workflow_run_id uuid not null references runledger.workflow_runs (id) on delete cascade,
    step_key        text not null check (btrim(step_key) <> ''),
    kind            text not null check (kind in ('job', 'external')),
    job_type        text check (btrim(job_type) <> ''),
    queue           text check (btrim(queue) <> ''),
    priority        smallint check (priority between -100 and 100),
    max_attempts    integer check (max_attempts > 0),
    timeout_seconds integer check (timeout_seconds > 0),
    payload         jsonb,
    status          text not null
        check (status in ('blocked', 'queued', 'running', 'waiting', 'succeeded', 'failed',
                          'cancelled')),
    deps_total      integer not null default 0,
    -- prerequisites that have not yet released this step
    deps_pending    integer not null default 0,
    job_id          uuid,
    output          jsonb,
    error           text,
    posted_at       timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    finished_at     timestamptz,
    constraint workflow_step_runs_key unique (workflow_run_id, step_key),
    check ((kind = 'job') = (job_type is not null)),
    check (kind = 'job' or (queue is null and priority is null and max_attempts is null
                            and timeout_seconds is null and payload is null)),
    check (kind = 'job' or status not in ('queued', 'running')),
    check (kind = 'external' or status <> 'waiting'),
    check (deps_pending between 0 and deps_total),
    check ((finished_at is null) = (status not in ('succeeded', 'failed', 'cancelled')))
);

-- Edges: step_id waits for prerequisite_id.
create table runledger.workflow_step_deps (
    workflow_run_id  uuid not null references runledger.workflow_runs (id) on delete cascade,
    step_id          bigint not null references runledger.workflow_step_runs (id)
                         on delete cascade,
    prerequisite_id  bigint not null references runledger.workflow_step_runs (id)
                         on delete cascade,
    step_key         text not null,
    prerequisite_key text not null,
    release_mode     text not null check (release_mode in ('on_success', 'on_terminal')),
    primary key (step_id, prerequisite_id),
    check (step_id <> prerequisite_id)
);
create index workflow_step_deps_prerequisite on runledger.workflow_step_deps (prerequisite_id);

-- One row per job. A queued row with run_at in the future is scheduled or awaiting retry.
create table runledger.jobs (
    id                  uuid primary key,
    queue               text not null default 'default' check (btrim(queue) <> ''),
    job_type            text not null check (btrim(job_type) <> ''),
    payload             jsonb not null default '{}'::jsonb,
    status              text not null default 'queued'
        check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority            smallint not null default 0 check (priority between -100 and 100),
    attempt             integer not null default 0 check (attempt >= 0),
    -- null until claimed: the handler's default is filled in by the claim
    max_attempts        integer check (max_attempts > 0),
    timeout_seconds     integer check (timeout_seconds > 0),
    run_at              timestamptz not null default now(),
    lease_token         uuid,
    lease_owner         text,
    lease_expires_at    timestamptz,
    started_at          timestamptz,
    -- when the reaper times the running attempt out: set at claim with a lease's grace, then
    -- kept exact by the heartbeat from the moment the handler really starts
    deadline_at         timestamptz,
    idempotency_key     text check (btrim(idempotency_key) <> ''),
    request_fingerprint text,
    workflow_run_id     uuid references runledger.workflow_runs (id) on delete cascade,
    step_id             bigint references runledger.workflow_step_runs (id) on delete cascade,
    step_key            text,
    output              jsonb,
    last_error          text,
    cancel_reason       text,
    -- set on jobs a cron schedule enqueued: which schedule, and the tick they stand for
    schedule_name       text,
    scheduled_at        timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    finished_at         timestamptz,
    check ((schedule_name is null) = (scheduled_at is null)),
    check ((status = 'running') = (lease_token is not null)),
    check ((lease_token is null) = (lease_expires_at is null)),
    check ((workflow_run_id is null) = (step_id is null)),
    check ((step_id is null) = (step_key is null)),
    check (step_id is null or idempotency_key is null),
    check (max_attempts is null or attempt <= max_attempts),
    check ((finished_at is null) = (status in ('queued', 'running')))
);
-- Keyed jobs only: most jobs have no key and need no entry here.
create unique index jobs_idempotency_key on runledger.jobs (job_type, idempotency_key)
    where idempotency_key is not null;
-- Runnable rows only: the claim walks this index in its ORDER BY.
create index jobs_runnable on runledger.jobs (queue, priority desc, run_at, id)
    where status = 'queued';
create index jobs_leases on runledger.jobs (lease_expires_at) where status = 'running';
create index jobs_deadlines on runledger.jobs (deadline_at) where status = 'running';
create index jobs_workflow_run on runledger.jobs (workflow_run_id)
    where workflow_run_id is not null;
create index jobs_finished on runledger.jobs (status, finished_at)
    where finished_at is not null;
-- A tick becomes at most one job, whatever happens to the schedulers.
create unique index jobs_schedule_tick on runledger.jobs (schedule_name, scheduled_at)
    where schedule_name is not null;

-- Claims turn over rows of jobs quickly; dead index entries at the head of jobs_runnable slow
-- every claim until vacuumed, so vacuum these tables far sooner than the defaults.
alter table runledger.jobs set (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);

alter table runledger.workflow_step_runs
    add constraint workflow_step_runs_job foreign key (job_id)
        references runledger.jobs (id) on delete set null deferrable initially deferred;

-- One row per attempt of a job.
create table runledger.job_attempts (
    id              bigint generated always as identity primary key,
    job_id          uuid not null references runledger.jobs (id) on delete cascade,
    attempt         integer not null check (attempt > 0),
    worker          text not null,
    lease_token     uuid not null unique,
    started_at      timestamptz not null default now(),
    finished_at     timestamptz,
    outcome         text check (outcome in ('succeeded', 'failed', 'timed_out', 'lease_expired',
                                            'cancelled', 'released')),
    error_type      text,
    error_message   text,
    error_traceback text,
    retry_at        timestamptz,
    retry_reason    text check (retry_reason in ('policy', 'handler')),
    check ((finished_at is null) = (outcome is null)),
    check ((retry_at is null) = (retry_reason is null))
);
create index job_attempts_job on runledger.job_attempts (job_id, attempt);
-- Room on each page for the finishing UPDATE (which changes no indexed column) to stay on
-- the page as a HOT update, adding no entry to the three indexes.
alter table runledger.job_attempts set (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.05
);

-- Cron schedules: the scheduler turns a due tick into a job in the transaction that moves
-- next_run_at forward. origin says who manages a row: 'registry' rows are declared in code
-- (Registry.schedule) and deleted by a runtime's start once its registry no longer declares
-- them; 'api' rows (upsert_schedule) stay until delete_schedule.
create table runledger.schedules (
    name            text primary key check (btrim(name) <> ''),
    origin          text not null default 'api' check (origin in ('registry', 'api')),
    cron            text not null check (btrim(cron) <> ''),
    timezone        text not null default 'UTC',
    job_type        text not null check (btrim(job_type) <> ''),
    payload         jsonb not null default '{}'::jsonb,
    queue           text not null default 'default' check (btrim(queue) <> ''),
    priority        smallint not null default 0 check (priority between -100 and 100),
    max_attempts    integer check (max_attempts > 0),
    timeout_seconds integer check (timeout_seconds > 0),
    enabled         boolean not null default true,
    next_run_at     timestamptz not null,
    last_run_at     timestamptz,
    last_job_id     uuid,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);
create index schedules_due on runledger.schedules (next_run_at) where enabled;

-- The append-only ledger of lifecycle transitions, each written in the transaction that made
-- it. No foreign keys: the history outlives pruned jobs and runs.
create table runledger.events (
    id              bigint generated always as identity primary key,
    occurred_at     timestamptz not null default clock_timestamp(),
    kind            text not null check (kind in (
        'job.enqueued', 'job.started', 'job.succeeded', 'job.retrying', 'job.failed',
        'job.cancelled', 'job.requeued', 'job.released',
        'run.enqueued', 'run.waiting', 'run.resumed', 'run.succeeded',
        'run.completed_with_errors', 'run.cancelled',
        'step.queued', 'step.waiting', 'step.succeeded', 'step.failed', 'step.cancelled')),
    job_id          uuid,
    workflow_run_id uuid,
    step_key        text,
    attempt         integer,
    data            jsonb not null default '{}'::jsonb,
    check (job_id is not null or workflow_run_id is not null)
);
create index events_job on runledger.events (job_id, id) where job_id is not null;
create index events_run on runledger.events (workflow_run_id, id)
    where workflow_run_id is not null;

-- Queue depth per queue and status, with the age of the oldest due queued job.
create view runledger.queue_depth as
select queue,
       status,
       count(*) as jobs,
       max(now() - run_at) filter (where status = 'queued' and run_at <= now())
           as oldest_due_age
from runledger.jobs
where status in ('queued', 'running')
group by queue, status;

-- Per job type: how many finished in the last hour, and how.
create view runledger.job_type_metrics as
select job_type,
       count(*) filter (where status = 'succeeded') as succeeded,
       count(*) filter (where status = 'failed') as failed,
       count(*) filter (where status = 'cancelled') as cancelled,
       avg(finished_at - started_at) filter (where status = 'succeeded') as avg_duration
from runledger.jobs
where finished_at > now() - interval '1 hour'
group by job_type;
