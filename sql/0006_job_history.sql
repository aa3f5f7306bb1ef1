-- runledger schema, version 6: finished jobs leave the hot table.
--
-- runledger.jobs keeps the jobs that are queued or running; a job that finishes (succeeded,
-- failed, cancelled) moves, in the transaction that finished it, to runledger.job_history,
-- an inheritance child of runledger.jobs. So the claim, the completion and the VACUUM of the
-- hot table touch only live rows however much history is kept, while
-- "select ... from runledger.jobs" still finds every job, queued or finished, as before.
-- Statements of the hot path name "only runledger.jobs". docs/operations.md ("Where finished
-- jobs live") says why this layout and not partitions or a view.
--
-- What the move replaces:
-- * unique indexes do not span a parent and its children, so idempotency keys and cron ticks
--   are held in tables of their own (job_keys, schedule_ticks) for the job's whole life;
-- * a foreign key cannot point at a parent and its children: job_attempts.job_id and
--   workflow_step_runs.job_id lose theirs, and a trigger does what their ON DELETE did when
--   a job is deleted (not when it moves).
-- Finished rows already here stay in runledger.jobs, where claims never read them, until the
-- runtimes' pruner moves them in small batches (runledger.settle_finished_jobs): the upgrade
-- takes a moment whatever the size of the history.

create table runledger.job_history () inherits (runledger.jobs);
alter table runledger.job_history
    add constraint job_history_pkey primary key (id),
    -- no live job here: the claim's and the reaper's filters exclude this table by it
    add constraint job_history_finished check (status in ('succeeded', 'failed', 'cancelled')),
    -- a parent's foreign keys are not inherited
    add constraint job_history_workflow_run foreign key (workflow_run_id)
        references runledger.workflow_runs (id) on delete cascade,
    add constraint job_history_step foreign key (step_id)
        references runledger.workflow_step_runs (id) on delete cascade;
create index job_history_finished on runledger.job_history (status, finished_at);
create index job_history_workflow_run on runledger.job_history (workflow_run_id)
    where workflow_run_id is not null;
-- Rows are written once and deleted by the pruner, never updated by the runtime.
alter table runledger.job_history set (
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

-- An idempotency key, held by its job from enqueue until the job is deleted.
create table runledger.job_keys (
    job_type        text not null,
    idempotency_key text not null,
    job_id          uuid not null,
    primary key (job_type, idempotency_key)
);
insert into runledger.job_keys (job_type, idempotency_key, job_id)
select job_type, idempotency_key, id from runledger.jobs where idempotency_key is not null;

-- A cron tick that became a job: at most one job per tick, whatever happens to it.
create table runledger.schedule_ticks (
    schedule_name text not null,
    scheduled_at  timestamptz not null,
    job_id        uuid not null,
    primary key (schedule_name, scheduled_at)
);
insert into runledger.schedule_ticks (schedule_name, scheduled_at, job_id)
select schedule_name, scheduled_at, id from runledger.jobs where schedule_name is not null;

alter table runledger.job_attempts drop constraint job_attempts_job_id_fkey;
alter table runledger.workflow_step_runs drop constraint workflow_step_runs_job;

-- Moves the rows an UPDATE of runledger.jobs finished into job_history, in the same
-- transaction. Statement-level, with the updated rows as a transition table: one call per
-- UPDATE, which returns at once for the claims and lease renewals that finish nothing.
create function runledger.move_finished_jobs() returns trigger
    language plpgsql
as $$
begin
    if not exists (select from finished_rows where finished_at is not null) then
        return null;
    end if;
    -- what leaves the hot table here is moved, not deleted: forget_deleted_jobs lets it be
    perform set_config('runledger.moving_jobs', 'on', true);
    with moved as (
        delete from only runledger.jobs as j
        using finished_rows as f
        where j.id = f.id and f.finished_at is not null
        returning j.*
    )
    insert into runledger.job_history select * from moved;
    perform set_config('runledger.moving_jobs', '', true);
    return null;
end
$$;
create trigger jobs_move_finished
    after update on runledger.jobs
    referencing new table as finished_rows
    for each statement execute function runledger.move_finished_jobs();

-- What the foreign keys' ON DELETE did, for jobs deleted (not moved): their attempts go, their
-- key and tick are free again, and their step forgets them.
create function runledger.forget_deleted_jobs() returns trigger
    language plpgsql
as $$
begin
    if current_setting('runledger.moving_jobs', true) = 'on' then
        return null;
    end if;
    delete from runledger.job_attempts as a using deleted_rows as d where a.job_id = d.id;
    delete from runledger.job_keys as k
    using deleted_rows as d
    where k.job_type = d.job_type and k.idempotency_key = d.idempotency_key and k.job_id = d.id;
    delete from runledger.schedule_ticks as t
    using deleted_rows as d
    where t.schedule_name = d.schedule_name and t.scheduled_at = d.scheduled_at
      and t.job_id = d.id;
    update runledger.workflow_step_runs as s
    set job_id = null
    from deleted_rows as d
    where s.id = d.step_id and s.job_id = d.id;
    return null;
end
$$;
create trigger jobs_forget_deleted
    after delete on runledger.jobs
    referencing old table as deleted_rows
    for each statement execute function runledger.forget_deleted_jobs();
create trigger job_history_forget_deleted
    after delete on runledger.job_history
    referencing old table as deleted_rows
    for each statement execute function runledger.forget_deleted_jobs();

-- Moves up to batch_size finished rows still in the hot table (written before version 6, or
-- inserted finished by hand) to job_history, oldest first; returns how many it moved.
create function runledger.settle_finished_jobs(batch_size integer) returns integer
    language plpgsql
as $$
declare
    moved_count integer;
begin
    perform set_config('runledger.moving_jobs', 'on', true);
    with doomed as (
        select id
        from only runledger.jobs
        where finished_at is not null
        order by finished_at
        limit batch_size
        for update skip locked
    ),
    moved as (
        delete from only runledger.jobs as j using doomed as d where j.id = d.id returning j.*
    )
    insert into runledger.job_history select * from moved;
    get diagnostics moved_count = row_count;
    perform set_config('runledger.moving_jobs', '', true);
    return moved_count;
end
$$;

-- Moves finished jobs back from job_history to the hot table, unchanged, so that a requeue
-- can update them there; returns the ids it moved.
create function runledger.reopen_jobs(ids uuid[]) returns setof uuid
    language plpgsql
as $$
begin
    perform set_config('runledger.moving_jobs', 'on', true);
    return query
    with moved as (
        delete from runledger.job_history where id = any(ids) returning *
    ),
    back as (
        insert into runledger.jobs select * from moved returning id
    )
    select id from back;
    perform set_config('runledger.moving_jobs', '', true);
end
$$;
