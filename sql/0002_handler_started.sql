-- runledger schema, version 2: a claimed job whose handler never started is not charged an
-- attempt when its worker dies.
--
-- A worker claims up to its concurrency plus its prefetch; prefetched jobs wait in memory for
-- a thread. handler_started_at says when the running attempt's handler started: the claim
-- sets it for the jobs that idle threads start at once, the runtime writes it shortly after a
-- prefetched job's handler starts, and it is null while the job waits. A lease that expires
-- while it is null is released by the reaper (outcome 'released', the attempt not counted)
-- instead of failing with 'lease_expired'.
alter table runledger.jobs add column handler_started_at timestamptz;

-- Attempts running at the upgrade were claimed by a version that did not say: charge them
-- on expiry, as that version did.
update runledger.jobs set handler_started_at = started_at where status = 'running';
