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

-- The claim's admission of constrained candidates: jobs with a concurrency key, and jobs of
-- queues with a concurrency or rate limit. The claim has locked the candidates' rows (SKIP
-- LOCKED) and passes them in claim order with their queue, key, limit and whether the claim's
-- snapshot saw a limit on their queue; this returns the ids it admits. VOLATILE: under READ
-- COMMITTED each statement in it takes a fresh snapshot, so a count read after a lock sees
-- every claim that held that lock before (an advisory xact lock is released after its
-- transaction's commit is visible). Lock order, after the job rows: queue rows in queue
-- order, then key advisory locks in key order; every one is a try (SKIP LOCKED, try-lock),
-- so a claim never waits here: a queue or key another claim is admitting admits nothing this
-- round. Nothing is counted but running rows (jobs_running_queue, jobs_running_keys), so a
-- crashed worker's job stops counting when the reaper releases its lease. The rate is
-- counted in fixed windows aligned to the epoch, by the claim's now() (its jobs' started_at),
-- in the queue row's window_start and window_starts.
create function runledger.admit_jobs(
    ids uuid[], queues text[], keys text[], limits integer[], limited boolean[]
) returns setof uuid
language plpgsql volatile
as $$
declare
    qs text[];             -- limited queues, in queue order
    q_room integer[];      -- per qs: starts still allowed this round (null: unbounded)
    q_window timestamptz[];  -- per qs: the rate window written back (null: no rate)
    q_used integer[];      -- per qs: starts counted in that window, this round's included
    ks text[];             -- keys, in key order
    k_running integer[];   -- per ks: running jobs with the key, this round's admitted
                           -- included (null: the key's lock is another claim's)
    s record;
    i integer;
    n integer;
    p integer;
    running integer;
    room integer;
    win timestamptz;
    used integer;
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        -- A snapshot kept for the whole transaction would count stale running jobs.
        raise exception 'runledger.admit_jobs needs READ COMMITTED, not %',
            current_setting('transaction_isolation')
            using errcode = 'invalid_transaction_state';
    end if;
    select coalesce(array_agg(q order by q), '{}') into qs
    from (select distinct q from unnest(queues, limited) as u(q, l) where l) as d;
    q_room := array_fill(0, array[cardinality(qs)]);
    q_window := array_fill(null::timestamptz, array[cardinality(qs)]);
    q_used := array_fill(0, array[cardinality(qs)]);
    for i in 1 .. cardinality(qs) loop
        select * into s from runledger.queues as q where q.queue = qs[i]
        for update skip locked;
        if not found or s.paused then
            continue;  -- another claim or a settings change holds it, or paused since: none
        end if;
        room := null;
        if s.concurrency is not null then
            select count(*) into running from only runledger.jobs as j
            where j.queue = qs[i] and j.status = 'running';
            room := greatest(s.concurrency - running, 0);
        end if;
        if s.rate is not null then
            win := to_timestamp(floor(extract(epoch from now()) / s.per_seconds::numeric)
                                * s.per_seconds::numeric);
            if s.window_start is null or s.window_start < win then
                used := 0;
            elsif s.window_start > win then
                used := s.rate;  -- a claim that began later opened the next window
            else
                used := s.window_starts;
            end if;
            room := least(room, greatest(s.rate - used, 0));
            if s.window_start is null or s.window_start <= win then
                q_window[i] := win;  -- written back; never over a newer window
                q_used[i] := used;
            end if;
        end if;
        q_room[i] := room;
    end loop;

    select coalesce(array_agg(k order by k), '{}') into ks
    from (select distinct k from unnest(keys) as u(k) where k is not null) as d;
    k_running := array_fill(null::integer, array[cardinality(ks)]);
    for i in 1 .. cardinality(ks) loop
        if pg_try_advisory_xact_lock(hashtextextended('runledger.concurrency:' || ks[i], 0)) then
            select count(*) into running from only runledger.jobs as j
            where j.concurrency_key = ks[i] and j.status = 'running';
            k_running[i] := running;
        end if;
    end loop;

    for n in 1 .. cardinality(ids) loop
        p := null;
        if limited[n] then
            p := array_position(qs, queues[n]);
            if q_room[p] is not null and q_room[p] <= 0 then
                continue;
            end if;
        end if;
        if keys[n] is not null then
            i := array_position(ks, keys[n]);
            -- each job starts while fewer than its own limit run with its key
            if k_running[i] is null or k_running[i] >= limits[n] then
                continue;
            end if;
            k_running[i] := k_running[i] + 1;
        end if;
        if p is not null then
            q_room[p] := q_room[p] - 1;
            q_used[p] := q_used[p] + 1;
        end if;
        return next ids[n];
    end loop;

    for i in 1 .. cardinality(qs) loop
        if q_window[i] is not null then
            update runledger.queues as q
            set window_start = q_window[i], window_starts = q_used[i]
            where q.queue = qs[i]
              and (q.window_start is distinct from q_window[i] or q.window_starts <> q_used[i]);
        end if;
    end loop;
    return;
end;
$$;
