-- runledger schema, version 10: pruning does not look for the same attempts twice.
--
-- The pruner deletes a batch of jobs with their attempts and events in one statement (by id,
-- each table through its own index: runledger.postgres.retention). The AFTER DELETE trigger
-- of runledger.jobs and runledger.job_history (forget_deleted_jobs, version 6) then looked up
-- every deleted job's attempts again, to delete what the statement had already deleted:
-- one more index probe per pruned job, about half of a batch's time. A statement that has
-- deleted the attempts itself now says so with the transaction-local setting
-- runledger.pruning = 'on', and the trigger leaves the attempts alone; it still frees keys
-- and ticks and clears steps. Any other delete (yours, by hand) works as before.
--
-- Only the function is replaced: no table is locked or rewritten, and a runtime of version 9
-- (which never sets runledger.pruning) keeps deleting attempts through the trigger.
create or replace function runledger.forget_deleted_jobs() returns trigger
    language plpgsql
as $$
begin
    if current_setting('runledger.moving_jobs', true) = 'on' then
        return null;
    end if;
    if current_setting('runledger.pruning', true) is distinct from 'on' then
        delete from runledger.job_attempts as a using deleted_rows as d where a.job_id = d.id;
    end if;
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
