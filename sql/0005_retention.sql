-- runledger schema, version 5: retention. Runtimes prune finished jobs and workflow runs
-- older than their policy (runledger.core.retention), oldest first, in small batches.
--
-- Finished jobs are found by jobs_finished (status, finished_at) since version 1; this adds
-- the same for runs, so that each batch reads only the rows it deletes. Building it locks
-- workflow_runs against writes for as long as it takes: about a second per million runs.
create index workflow_runs_finished on runledger.workflow_runs (status, finished_at)
    where finished_at is not null;
