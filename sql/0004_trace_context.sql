-- runledger schema, version 4: the W3C trace context of the code that enqueued a job, so that
-- the handler's span continues the enqueuer's trace (OpenTelemetry, optional).
--
-- A carrier as OpenTelemetry's propagators write it ({"traceparent": "00-...", and
-- "tracestate" when set}); null when no span was active at enqueue or OpenTelemetry is not
-- installed. A workflow run keeps the context of enqueue_workflow, and each step's job gets a
-- copy when it is inserted (at enqueue for root steps, at release for the others).
alter table runledger.jobs add column trace_context jsonb;
alter table runledger.workflow_runs add column trace_context jsonb;
