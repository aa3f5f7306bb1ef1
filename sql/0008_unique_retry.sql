-- runledger schema, version 8: idempotency keys with a window, and retried workflow runs.
--
-- Unique modes. A key enqueued with unique=Unique.active() or Unique.within(period) can pass
-- to a new job once its holder has finished or the period has gone: enqueue points the
-- job_keys row at the new job and inserts it. The hot table's unique index
-- jobs_idempotency_key cannot stay: a database upgraded from version 5 still holds finished
-- rows in runledger.jobs until the reapers move them to job_history, and such a row keeps its
-- key in that index, so the new job with the same key would be refused (or, under the
-- ON CONFLICT DO NOTHING that enqueue used to name it in, silently not written). Since
-- version 6 runledger.job_keys holds every key for its job's whole life and enqueue inserts
-- the job only once it holds the key there, so the index enforces nothing job_keys does not,
-- and dropping it saves its upkeep on every keyed enqueue and finish.
-- Writers of runledger before this version name the index in their ON CONFLICT: their keyed
-- enqueues fail ("no unique or exclusion constraint matching") once this is applied, so
-- upgrade every process that enqueues with keys along with the workers.
drop index runledger.jobs_idempotency_key;

-- retry_workflow writes a 'run.retried' event. The CHECK is replaced under its own name with
-- the wider list, NOT VALID, so that the upgrade does not scan the events table while holding
-- its exclusive lock: every existing row passed the narrower CHECK, and new rows are checked.
alter table runledger.events drop constraint events_kind_check;
alter table runledger.events add constraint events_kind_check check (kind in (
    'job.enqueued', 'job.started', 'job.succeeded', 'job.retrying', 'job.failed',
    'job.cancelled', 'job.requeued', 'job.released', 'job.snoozed',
    'run.enqueued', 'run.waiting', 'run.resumed', 'run.succeeded',
    'run.completed_with_errors', 'run.cancelled', 'run.retried',
    'step.queued', 'step.waiting', 'step.succeeded', 'step.failed', 'step.cancelled')) not valid;
