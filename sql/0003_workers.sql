-- runledger schema, version 3: one row per live runtime, for `runledger workers` and
-- `runledger health`.
--
-- A runtime inserts its row when it starts (id = Runtime.worker_id, the name it writes in
-- job_attempts.worker), its heartbeat sets last_seen_at with every lease renewal (every
-- lease_seconds / 3), and it deletes the row when it stops cleanly. A row not seen for one
-- lease_seconds (three missed beats) is stale: its worker died, hangs or lost the database.
-- Reapers delete rows not seen for ten times their lease_seconds.
create table runledger.workers (
    id            text primary key check (btrim(id) <> ''),
    host          text not null,
    pid           integer not null,
    version       text not null,
    queues        text[] not null,
    handlers      text[] not null,
    concurrency   integer not null check (concurrency >= 1),
    lease_seconds double precision not null check (lease_seconds > 0),
    started_at    timestamptz not null default now(),
    last_seen_at  timestamptz not null default now()
);
