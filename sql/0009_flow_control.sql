-- runledger schema, version 9: flow control. Per-key concurrency limits, queue concurrency
-- and rate limits, and paused queues, all enforced by the claim across every runtime.
--
-- Per-key concurrency. A job with a concurrency_key starts only while fewer than its
-- concurrency_limit jobs with that key are running. No counter is kept: the claim takes a
-- transaction-scoped advisory lock per key (try-lock: a key another claim is admitting is
-- skipped, never waited for) and counts the key's running jobs with a fresh snapshot, through
-- jobs_running_keys. A crashed holder's job stops counting when the reaper releases its
-- expired lease. The new columns are nullable without defaults, and their CHECKs are added
-- NOT VALID (every existing row has nulls there), so the upgrade rewrites and scans nothing.
alter table runledger.jobs
    add column concurrency_key text,
    add column concurrency_limit integer;
alter table runledger.jobs add constraint jobs_concurrency_key_check
    check (btrim(concurrency_key) <> '') not valid;
alter table runledger.jobs add constraint jobs_concurrency_limit_check
    check (concurrency_limit > 0) not valid;
alter table runledger.jobs add constraint jobs_concurrency_check
    check ((concurrency_key is null) = (concurrency_limit is null)) not valid;
-- Keyed running jobs only: most jobs have no key and never enter this index.
create index jobs_running_keys on runledger.jobs (concurrency_key)
    where status = 'running' and concurrency_key is not null;
-- A queue's running jobs, counted by a claim of a queue with a concurrency limit.
create index jobs_running_queue on runledger.jobs (queue) where status = 'running';

-- A workflow step's key and limit, copied to its job when the step is queued.
alter table runledger.workflow_step_runs
    add column concurrency_key text,
    add column concurrency_limit integer;
alter table runledger.workflow_step_runs add constraint workflow_step_runs_concurrency_check
    check ((concurrency_key is null) = (concurrency_limit is null)
           and btrim(concurrency_key) <> '' and concurrency_limit > 0) not valid;

-- Queue settings, changed at run time by set_queue_limits, pause_queue and resume_queue and
-- obeyed by every runtime's next claim. A queue without a row has no limit and is not
-- paused. rate starts per per_seconds are counted in fixed windows aligned to the epoch
-- (window_start, window_starts), written by the claims that admit them under the row's lock.
create table runledger.queues (
    queue         text primary key check (btrim(queue) <> ''),
    paused        boolean not null default false,
    paused_at     timestamptz,
    paused_by     text,
    concurrency   integer check (concurrency > 0),
    rate          integer check (rate > 0),
    per_seconds   double precision check (per_seconds > 0),
    window_start  timestamptz,
    window_starts integer not null default 0 check (window_starts >= 0),
    updated_at    timestamptz not null default now(),
    check ((rate is null) = (per_seconds is null)),
    check (paused = (paused_at is not null))
);

-- Queue events (queue.paused, queue.resumed, queue.limited) name their queue and neither a
-- job nor a run. The CHECKs are replaced under their own names, NOT VALID as in 0007.
alter table runledger.events add column queue text;
alter table runledger.events drop constraint events_check;
alter table runledger.events add constraint events_check
    check (job_id is not null or workflow_run_id is not null or queue is not null) not valid;
alter table runledger.events drop constraint events_kind_check;
alter table runledger.events add constraint events_kind_check check (kind in (
    'job.enqueued', 'job.started', 'job.succeeded', 'job.retrying', 'job.failed',
    'job.cancelled', 'job.requeued', 'job.released', 'job.snoozed',
    'run.enqueued', 'run.waiting', 'run.resumed', 'run.succeeded',
    'run.completed_with_errors', 'run.cancelled', 'run.retried',
    'step.queued', 'step.waiting', 'step.succeeded', 'step.failed', 'step.cancelled',
    'queue.paused', 'queue.resumed', 'queue.limited')) not valid;
create index events_queue on runledger.events (queue, id) where queue is not null;
