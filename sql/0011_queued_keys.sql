-- runledger schema, version 11: the claim looks for flow control before it pays for it.
--
-- Since version 9 every claim scanned its queues through the flow-control path (the queue's
-- settings, the full keys, the admission of constrained candidates) whether or not any job
-- or queue used flow control. The claim now first asks, once, whether a queue it claims from
-- is paused or limited, or has a keyed job queued; when none has, it claims by the plain scan
-- of the release before flow control. This index answers the second question with one probe:
-- it holds keyed queued jobs only, so most jobs never enter it and it is usually empty.
--
-- Building it scans runledger.jobs (the queue: queued and running jobs, not the history) and
-- blocks writes to it meanwhile, about a second per million queued jobs. A runtime of version
-- 10 still running ignores the index and claims as before.
create index jobs_queued_keys on runledger.jobs (queue)
    where status = 'queued' and concurrency_key is not null;
