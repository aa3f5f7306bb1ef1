-- runledger schema, version 12: the events in segments, so that a period of them goes with one
-- DROP TABLE rather than a DELETE per row.
--
-- runledger.events becomes a table LIST-partitioned by a new column, segment. Each partition,
-- runledger.events_s<N>, holds the events written while N was the column's DEFAULT; the
-- pruner opens the next segment (a new partition, then the DEFAULT moved to it) once a day,
-- and drops a segment whole once everything in it is older than the shortest keep of the
-- retention policy, after copying to the newest segment the events of the jobs and runs it
-- still keeps. runledger.event_segments records when each segment was opened and closed.
--
-- The table as it was becomes segment 0, runledger.events_s0: its rows stay where they are
-- (the new column costs no rewrite) and keep their ids. Ids still come from one sequence,
-- runledger.event_ids, taking over from the identity's; a partitioned table's unique indexes
-- must include its key, so each segment has its own primary key (id) and the parent has
-- none. The indexes on job, run and queue are the parent's, and every segment has them.
--
-- Validating the CHECK constraints of version 9 on the old rows, then attaching segment 0 (to
-- prove every row is in it), reads the whole events table three times, with the table
-- locked: a few seconds per million events. Stop the runtimes first, as
-- for every migration; a runtime of version 11 writes events as before, into the newest
-- segment, and deletes them with their jobs.
create sequence runledger.event_ids as bigint;
select setval(
    'runledger.event_ids',
    greatest(
        coalesce(pg_sequence_last_value(pg_get_serial_sequence('runledger.events', 'id')), 0),
        coalesce((select max(id) from runledger.events), 0)
    ) + 1,
    false
);

alter table runledger.events alter column id drop identity;
alter table runledger.events rename to events_s0;
alter table runledger.events_s0 rename constraint events_pkey to events_s0_pkey;
alter index runledger.events_job rename to events_s0_job;
alter index runledger.events_run rename to events_s0_run;
alter index runledger.events_queue rename to events_s0_queue;
alter table runledger.events_s0 add column segment integer not null default 0;
-- A partition has its parent's CHECK constraints, valid: those of version 9 were added NOT
-- VALID, and every row written since meets them (the rows before it, the older ones).
alter table runledger.events_s0 validate constraint events_check;
alter table runledger.events_s0 validate constraint events_kind_check;

create table runledger.events (
    id              bigint not null default nextval('runledger.event_ids'),
    occurred_at     timestamptz not null default clock_timestamp(),
    kind            text not null,
    job_id          uuid,
    workflow_run_id uuid,
    step_key        text,
    attempt         integer,
    data            jsonb not null default '{}'::jsonb,
    queue           text,
    segment         integer not null default 0,
    constraint events_check
        check (job_id is not null or workflow_run_id is not null or queue is not null),
    constraint events_kind_check check (kind in (
        'job.enqueued', 'job.started', 'job.succeeded', 'job.retrying', 'job.failed',
        'job.cancelled', 'job.requeued', 'job.released', 'job.snoozed',
        'run.enqueued', 'run.waiting', 'run.resumed', 'run.succeeded',
        'run.completed_with_errors', 'run.cancelled', 'run.retried',
        'step.queued', 'step.waiting', 'step.succeeded', 'step.failed', 'step.cancelled',
        'queue.paused', 'queue.resumed', 'queue.limited'))
) partition by list (segment);
alter sequence runledger.event_ids owned by runledger.events.id;

create index events_job on only runledger.events (job_id, id) where job_id is not null;
create index events_run on only runledger.events (workflow_run_id, id)
    where workflow_run_id is not null;
create index events_queue on only runledger.events (queue, id) where queue is not null;

alter table runledger.events attach partition runledger.events_s0 for values in (0);
alter index runledger.events_job attach partition runledger.events_s0_job;
alter index runledger.events_run attach partition runledger.events_s0_run;
alter index runledger.events_queue attach partition runledger.events_s0_queue;

create table runledger.event_segments (
    segment   integer primary key,
    opened_at timestamptz not null default clock_timestamp(),
    closed_at timestamptz,
    check (closed_at is null or closed_at >= opened_at)
);
insert into runledger.event_segments (segment, opened_at)
values (0, coalesce((select occurred_at from runledger.events_s0 order by id limit 1), now()));
