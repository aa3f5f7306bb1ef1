-- runledger schema, version 7: snoozed attempts and job progress.
--
-- Snooze: a handler that raises runledger.Snooze(after=...) puts its job back in the queue
-- for later without spending an attempt. Its attempt row ends with outcome 'snoozed' and the
-- transition is recorded as a 'job.snoozed' event. The two CHECKs are replaced under their
-- own names with the wider value lists. They are added NOT VALID, so that the upgrade does
-- not scan job_attempts and events while holding their exclusive locks: every existing row
-- already passed the narrower CHECK being replaced, and new rows are checked as before.
alter table runledger.job_attempts drop constraint job_attempts_outcome_check;
alter table runledger.job_attempts add constraint job_attempts_outcome_check
    check (outcome in ('succeeded', 'failed', 'timed_out', 'lease_expired', 'cancelled',
                       'released', 'snoozed')) not valid;

alter table runledger.events drop constraint events_kind_check;
alter table runledger.events add constraint events_kind_check check (kind in (
    'job.enqueued', 'job.started', 'job.succeeded', 'job.retrying', 'job.failed',
    'job.cancelled', 'job.requeued', 'job.released', 'job.snoozed',
    'run.enqueued', 'run.waiting', 'run.resumed', 'run.succeeded',
    'run.completed_with_errors', 'run.cancelled',
    'step.queued', 'step.waiting', 'step.succeeded', 'step.failed', 'step.cancelled')) not valid;

-- Progress: the latest value a handler reported with ctx.progress(...), written with the
-- heartbeat's lease renewal and at the attempt's end; null until one is reported. Its shape
-- is runledger.core.progress's: {"fraction": 0.4, "note": "...", "attempt": 1, "at": "..."}
-- or {"value": <any JSON>, ...}. Adding a nullable column without a default rewrites nothing.
alter table runledger.jobs add column progress jsonb;
