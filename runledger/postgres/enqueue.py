"""Transactional enqueue of jobs and workflow runs on the caller's connection.

Each function writes its rows, their ``enqueued`` events and a NOTIFY on ``NOTIFY_CHANNEL``
(delivered when the caller commits) in the caller's transaction; see
``runledger.postgres.connection`` for how the connection is used. Batches are single
statements over arrays, or, when large and without idempotency keys, COPYs: either way
``enqueue_many`` of 10,000 jobs takes a handful of round trips.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from runledger.core.handler import HandlerCatalog, HandlerDefaults
from runledger.core.job import (
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    Job,
    concurrency_request_part,
    fingerprint,
)
from runledger.core.limits import DEFAULT_CONCURRENCY_LIMIT, check_concurrency
from runledger.core.payload import MAX_PAYLOAD_BYTES, JsonValue, dumps, dumps_within
from runledger.core.status import StepKind, StepStatus
from runledger.core.unique import FOREVER, Unique, UniqueMode
from runledger.core.workflow import Workflow
from runledger.errors import (
    ConfigError,
    DatabaseError,
    IdempotencyConflict,
    InvalidConcurrencyKey,
    UnknownJobType,
)
from runledger.postgres.channels import JOBS
from runledger.postgres.connection import Conn, savepoint, writing
from runledger.postgres.copytext import copy_int, copy_json_text, copy_text
from runledger.postgres.ids import new_id, new_ids
from runledger.postgres.tracecontext import current_trace_context

NOTIFY_CHANNEL = JOBS
"""Enqueue notifies this channel with the queue name as payload; workers LISTEN on it.

The same as ``runledger.postgres.channels.JOBS``, kept under its public name."""

BATCH_SIZE = 5_000

PAYLOAD_LIMIT_ENV = "RUNLEDGER_MAX_PAYLOAD_BYTES"
"""The environment variable that overrides ``MAX_PAYLOAD_BYTES`` for calls that give none."""


def payload_limit(max_payload_bytes: int | None) -> int:
    """The payload size limit of a call: its own, else ``RUNLEDGER_MAX_PAYLOAD_BYTES``, else
    ``runledger.core.payload.MAX_PAYLOAD_BYTES`` (1 MiB).

    The environment is read at each call (a dictionary lookup), so tests and operators can
    change it without a restart.

    Raises:
        ConfigError: the limit given, or the variable's value, is not a positive integer.
    """
    if max_payload_bytes is not None:
        if (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or (max_payload_bytes <= 0)
        ):
            raise ConfigError(
                name="max_payload_bytes",
                value=repr(max_payload_bytes),
                expected="a positive integer of bytes",
            )
        return max_payload_bytes
    raw = os.environ.get(PAYLOAD_LIMIT_ENV)
    if raw is None or not raw.strip():
        return MAX_PAYLOAD_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ConfigError(name=PAYLOAD_LIMIT_ENV, value=raw, expected="a positive integer of bytes")
    return limit


# Payloads travel as one JSON array (unpacked by position) rather than a jsonb[] parameter:
# adapting a jsonb[] escapes every element again and costs more than the rest of the row.
_insert_jobs_template = """
with input as (
    select t.*, p.payload
    from unnest(
        %(ids)s::uuid[], %(queues)s::text[], %(job_types)s::text[],
        %(priorities)s::smallint[], %(max_attempts)s::integer[], %(timeouts)s::integer[],
        %(run_ats)s::timestamptz[], %(delays)s::float8[], %(keys)s::text[],
        %(fingerprints)s::text[]{limits_param}
    ) with ordinality as t(id, queue, job_type, priority, max_attempts, timeout_seconds,
                           run_at, delay, idempotency_key, request_fingerprint{limits_name},
                           ord)
    join jsonb_array_elements(%(payloads)s::jsonb) with ordinality as p(payload, ord)
        using (ord)
),
{keys_cte}inserted as (
    insert into runledger.jobs (
        id, queue, job_type, payload, priority, max_attempts, timeout_seconds, run_at,
        idempotency_key, request_fingerprint{limits_column}{trace_column})
    select id, queue, job_type, payload, priority, max_attempts, timeout_seconds,
           coalesce(run_at, now() + make_interval(secs => coalesce(delay, 0))),
           idempotency_key, request_fingerprint{limits_column}{trace_value}
    from input
{keys_filter}    returning id, queue
),
events as (
    insert into runledger.events (kind, job_id)
    select 'job.enqueued', id from inserted
)
select (select array_agg(id) from inserted) as ids,
       (select count(pg_notify('{jobs}', queue))
        from (select distinct queue from inserted) as q) as notified
"""

# The job holding each key, with what its window depends on. A statement of its own, so that
# it sees the holder that a concurrent enqueue of the key committed while this one waited.
EXISTING_JOBS = """
select k.job_type, k.idempotency_key, k.job_id, j.request_fingerprint,
       coalesce(j.status in ('queued', 'running'), false), j.created_at, now()
from runledger.job_keys as k
left join runledger.jobs as j on j.id = k.job_id
where (k.job_type, k.idempotency_key) in (
    select * from unnest(%(job_types)s::text[], %(keys)s::text[]))
"""

# Keys whose window is over pass to new jobs. Each key row is locked in a fixed order (so two
# batches sharing keys wait rather than deadlock) and only while it still names the holder
# this enqueue saw: one that waited for another enqueue taking the same key over finds the
# row changed, takes nothing, and returns that enqueue's job instead. A window that ends
# with the holder's run (if_finished) is checked again here, as this statement sees the
# holder: a requeue committed since this enqueue's read made it live again (a requeue that
# commits while this waits for the row has replaced the row, which this then skips).
TAKE_OVER_KEYS = """
with input as (
    select *
    from unnest(%(job_types)s::text[], %(keys)s::text[], %(holders)s::uuid[],
                %(ids)s::uuid[], %(if_finished)s::boolean[])
        as t(job_type, idempotency_key, holder, id, if_finished)
),
locked as (
    select k.job_type, k.idempotency_key, i.id
    from runledger.job_keys as k
    join input as i
      on i.job_type = k.job_type and i.idempotency_key = k.idempotency_key
     and i.holder = k.job_id
    where not (i.if_finished and exists (
        select from only runledger.jobs as j
        where j.id = k.job_id and j.status in ('queued', 'running')))
    order by k.job_type, k.idempotency_key
    for update of k
)
update runledger.job_keys as k
set job_id = l.id
from locked as l
where k.job_type = l.job_type and k.idempotency_key = l.idempotency_key
returning k.job_id
"""

_insert_run_template = """
insert into runledger.workflow_runs (
    id, name, idempotency_key, request_fingerprint, input, result_step, status,
    steps_total, steps_open, steps_active{trace_column})
values (
    %(id)s, %(name)s, %(key)s, %(fingerprint)s, %(input)s::jsonb, %(result_step)s,
    %(status)s, %(steps)s, %(steps)s, %(active)s{trace_value})
on conflict on constraint workflow_runs_idempotency_key do nothing
returning id
"""

EXISTING_RUN = """
select id, request_fingerprint from runledger.workflow_runs
where name = %(name)s and idempotency_key = %(key)s
"""

# Steps are inserted in topological order (ORDER BY ord), so identity ids grow from
# prerequisites to dependents: the lock order relies on it.
_insert_run_steps_template = """
with step_input as (
    select *
    from unnest(
        %(keys)s::text[], %(kinds)s::text[], %(job_types)s::text[], %(queues)s::text[],
        %(priorities)s::smallint[], %(max_attempts)s::integer[], %(timeouts)s::integer[],
        %(payloads)s::jsonb[], %(statuses)s::text[], %(deps)s::integer[],
        %(job_ids)s::uuid[]{limits_param}
    ) with ordinality as s(step_key, kind, job_type, queue, priority, max_attempts,
                           timeout_seconds, payload, status, deps_total, job_id{limits_name},
                           ord)
),
steps as (
    insert into runledger.workflow_step_runs (
        workflow_run_id, step_key, kind, job_type, queue, priority, max_attempts,
        timeout_seconds, payload, status, deps_total, deps_pending, job_id{limits_column})
    select %(run_id)s, step_key, kind, job_type, queue, priority, max_attempts,
           timeout_seconds, payload, status, deps_total, deps_total, job_id{limits_column}
    from step_input
    order by ord
    returning id, step_key, status, job_id
),
edges as (
    insert into runledger.workflow_step_deps (
        workflow_run_id, step_id, prerequisite_id, step_key, prerequisite_key, release_mode)
    select %(run_id)s, s.id, p.id, e.step_key, e.prerequisite_key, e.release_mode
    from unnest(%(edge_steps)s::text[], %(edge_prerequisites)s::text[],
                %(edge_modes)s::text[]) as e(step_key, prerequisite_key, release_mode)
    join steps as s on s.step_key = e.step_key
    join steps as p on p.step_key = e.prerequisite_key
),
jobs as (
    insert into runledger.jobs (
        id, queue, job_type, payload, priority, max_attempts, timeout_seconds,
        workflow_run_id, step_id, step_key{limits_column}{trace_column})
    select s.job_id, i.queue, i.job_type, i.payload, i.priority, i.max_attempts,
           i.timeout_seconds, %(run_id)s, s.id, s.step_key{limits_value}{trace_value}
    from steps as s
    join step_input as i using (step_key)
    where s.job_id is not null
    returning id, queue, step_key
),
events as (
    insert into runledger.events (kind, job_id, workflow_run_id, step_key, data)
    select 'run.enqueued', null, %(run_id)s, null, jsonb_build_object('name', %(name)s::text)
    union all
    select 'step.' || s.status, s.job_id, %(run_id)s, s.step_key, '{{}}'::jsonb
    from steps as s where s.status in ('queued', 'waiting')
    union all
    select 'job.enqueued', j.id, %(run_id)s, j.step_key, '{{}}'::jsonb
    from jobs as j
)
select count(pg_notify('{jobs}', queue))
from (select distinct queue from jobs) as q
"""

# A batch with idempotency keys claims them in job_keys first (schema version 6): a key is held
# there for its job's whole life (or until a unique window lets a new job take it over), while
# the job moves to job_history when it finishes, beyond the reach of a unique index on
# runledger.jobs; a key already held keeps its job out. Batches without keys skip it (and work
# on a schema before version 6).
_keys_cte = """
keys as (
    insert into runledger.job_keys (job_type, idempotency_key, job_id)
    select job_type, idempotency_key, id
    from input
    where idempotency_key is not null
    -- A fixed order, so two batches sharing keys wait for each other instead of deadlocking.
    order by job_type, idempotency_key, id
    on conflict do nothing
    returning job_id
),"""
_keys_filter = "    where idempotency_key is null or id in (select job_id from keys)\n"

# Each statement that writes jobs or runs comes in two spellings: without trace_context (no
# span active at enqueue; also works on a schema before version 4) and with it. The templates
# are in lower case: they are not SQL constants.
_UNTRACED = {"jobs": JOBS, "trace_column": "", "trace_value": ""}
_TRACED = {
    "jobs": JOBS,
    "trace_column": ", trace_context",
    "trace_value": ", %(trace_context)s::jsonb",
}
_UNKEYED = {"keys_cte": "", "keys_filter": ""}
_KEYED = {"keys_cte": _keys_cte.lstrip("\n") + "\n", "keys_filter": _keys_filter}
# And in two more: without the concurrency columns (no job of the batch has a concurrency
# key; also works on a schema before version 9) and with them.
_UNLIMITED = {"limits_param": "", "limits_name": "", "limits_column": ""}
_LIMITED = {
    "limits_param": ",\n        %(concurrency_keys)s::text[], %(concurrency_limits)s::integer[]",
    "limits_name": ", concurrency_key, concurrency_limit",
    "limits_column": ", concurrency_key, concurrency_limit",
}
INSERT_JOBS = _insert_jobs_template.format(**_UNTRACED, **_UNKEYED, **_UNLIMITED)
INSERT_TRACED_JOBS = _insert_jobs_template.format(**_TRACED, **_UNKEYED, **_UNLIMITED)
INSERT_KEYED_JOBS = _insert_jobs_template.format(**_UNTRACED, **_KEYED, **_UNLIMITED)
INSERT_TRACED_KEYED_JOBS = _insert_jobs_template.format(**_TRACED, **_KEYED, **_UNLIMITED)
INSERT_LIMITED_JOBS = _insert_jobs_template.format(**_UNTRACED, **_UNKEYED, **_LIMITED)
INSERT_TRACED_LIMITED_JOBS = _insert_jobs_template.format(**_TRACED, **_UNKEYED, **_LIMITED)
INSERT_KEYED_LIMITED_JOBS = _insert_jobs_template.format(**_UNTRACED, **_KEYED, **_LIMITED)
INSERT_TRACED_KEYED_LIMITED_JOBS = _insert_jobs_template.format(**_TRACED, **_KEYED, **_LIMITED)
_INSERT_JOBS = {
    # (traced, idempotency keys, concurrency keys)
    (False, False, False): INSERT_JOBS,
    (True, False, False): INSERT_TRACED_JOBS,
    (False, True, False): INSERT_KEYED_JOBS,
    (True, True, False): INSERT_TRACED_KEYED_JOBS,
    (False, False, True): INSERT_LIMITED_JOBS,
    (True, False, True): INSERT_TRACED_LIMITED_JOBS,
    (False, True, True): INSERT_KEYED_LIMITED_JOBS,
    (True, True, True): INSERT_TRACED_KEYED_LIMITED_JOBS,
}
_STEPS_UNLIMITED = {"limits_param": "", "limits_name": "", "limits_column": "",
                    "limits_value": ""}  # fmt: skip
_STEPS_LIMITED = {**_LIMITED, "limits_value": ", i.concurrency_key, i.concurrency_limit"}
INSERT_RUN = _insert_run_template.format(**_UNTRACED)
INSERT_TRACED_RUN = _insert_run_template.format(**_TRACED)
INSERT_RUN_STEPS = _insert_run_steps_template.format(**_UNTRACED, **_STEPS_UNLIMITED)
INSERT_TRACED_RUN_STEPS = _insert_run_steps_template.format(**_TRACED, **_STEPS_UNLIMITED)
INSERT_LIMITED_RUN_STEPS = _insert_run_steps_template.format(**_UNTRACED, **_STEPS_LIMITED)
INSERT_TRACED_LIMITED_RUN_STEPS = _insert_run_steps_template.format(**_TRACED, **_STEPS_LIMITED)


@attrs.frozen(kw_only=True)
class _Resolved:
    """A job with the registry's defaults applied: the row about to be written."""

    job: Job
    id: uuid.UUID
    queue: str
    max_attempts: int | None
    timeout_seconds: int | None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None

    def fingerprint(self) -> str:
        return fingerprint(
            {
                "job_type": self.job.job_type,
                "payload": self.job.stored_payload,
                "queue": self.queue,
                "priority": self.job.priority,
                "max_attempts": self.max_attempts,
                "timeout_seconds": self.timeout_seconds,
                **self.job.unique.request_part(),
                **concurrency_request_part(self.concurrency_key, self.concurrency_limit),
            }
        )


def _defaults(
    registry: HandlerCatalog | None, job_type: str, step_key: str | None = None
) -> HandlerDefaults | None:
    if registry is None:
        return None
    found = registry.handler_defaults(job_type)
    if found is None:
        raise UnknownJobType(job_type=job_type, step_key=step_key, known=registry.job_types())
    return found


def _options(job: Job, defaults: HandlerDefaults | None) -> tuple[str, int | None, int | None]:
    """The queue, max_attempts and timeout a job is written with: its own, else its handler's."""
    return (
        job.queue or (defaults and defaults.queue) or DEFAULT_QUEUE,
        job.max_attempts or (defaults and defaults.max_attempts) or None,
        job.timeout_seconds or (defaults and defaults.timeout_seconds) or None,
    )


def concurrency(
    job_type: str,
    payload: JsonValue,
    key: str | None,
    limit: int | None,
    defaults: HandlerDefaults | None,
    *,
    step_key: str | None = None,
) -> tuple[str | None, int | None]:
    """The concurrency key and limit a job (or step) is written with: its own key, else its
    handler's (a function of the payload is called here); the limit its own, else the
    handler's, else ``DEFAULT_CONCURRENCY_LIMIT``.

    Raises:
        InvalidConcurrencyKey: the handler's function raised or returned no valid key.
    """
    if key is None and defaults is not None and defaults.concurrency_key is not None:
        found = defaults.concurrency_key
        if callable(found):
            try:
                key = found({} if payload is None else payload)
            except Exception as err:
                raise InvalidConcurrencyKey(
                    key=None, limit=limit, step_key=step_key,
                    reason=f"the concurrency_key function of handler {job_type!r} raised "
                    f"{type(err).__name__}: {err}",
                ) from err  # fmt: skip
        else:
            key = found
        check_concurrency(key, limit, step_key=step_key)
    if key is None:
        return None, None
    default_limit = defaults.concurrency_limit if defaults is not None else None
    return key, limit or default_limit or DEFAULT_CONCURRENCY_LIMIT


def _resolve(job: Job, registry: HandlerCatalog | None, job_id: uuid.UUID) -> _Resolved:
    defaults = _defaults(registry, job.job_type)
    queue, max_attempts, timeout_seconds = _options(job, defaults)
    key, limit = concurrency(
        job.job_type, job.payload, job.concurrency_key, job.concurrency_limit, defaults
    )
    return _Resolved(
        job=job, id=job_id, queue=queue, max_attempts=max_attempts,
        timeout_seconds=timeout_seconds, concurrency_key=key, concurrency_limit=limit,
    )  # fmt: skip


def _trace_context_json() -> str | None:
    """The active span's W3C trace context as JSON text, stored with the rows written."""
    carrier = current_trace_context()
    return None if carrier is None else dumps(carrier)


def enqueue(
    conn: Conn,
    job_type: str,
    payload: JsonValue = None,
    *,
    queue: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    run_at: Any = None,
    delay: Any = None,
    max_attempts: int | None = None,
    timeout_seconds: int | None = None,
    idempotency_key: str | None = None,
    unique: Unique = FOREVER,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    registry: HandlerCatalog | None = None,
    max_payload_bytes: int | None = None,
) -> uuid.UUID:
    """Queue one job in the caller's transaction and return its id.

    The job, its ``job.enqueued`` event and a NOTIFY are written on ``conn`` and become
    visible when the caller commits; roll back and nothing was queued. Never commits, rolls
    back or closes ``conn`` (an autocommit connection gets a short transaction of its own).
    Blocks for one round trip, or while another transaction inserts the same idempotency key.
    Thread-safe as far as ``conn`` is.

    With ``idempotency_key``, enqueueing the same request (type, payload, queue, priority,
    attempts, timeout, unique window) again returns the existing job's id and writes nothing,
    for as long as ``unique`` says (``runledger.Unique``): by default as long as that job is in
    the ledger; with ``Unique.active()`` while it is queued or running; with
    ``Unique.within(period)`` for ``period`` from its enqueue. After the window, the enqueue
    queues a new job, which holds the key from then on. Two transactions enqueueing one key at
    once make one job: the second waits for the first to commit (or roll back).

    With ``concurrency_key``, the job starts only while fewer than ``concurrency_limit``
    (default: the handler's, else 1) jobs with that key run, across all runtimes; with a
    ``registry``, a job without a key takes its handler's (see ``docs/flow-control.md``).

    The payload's canonical JSON may be at most ``max_payload_bytes`` bytes; None takes
    ``RUNLEDGER_MAX_PAYLOAD_BYTES`` from the environment, else 1 MiB (see ``payload_limit``).

    Raises:
        JobOptionError: an invalid option (a subclass naming it, e.g. ``TextTooLong``,
            ``PayloadTooLarge``, ``RunAtOutOfRange``); nothing was sent.
        ConfigError: ``max_payload_bytes`` or ``RUNLEDGER_MAX_PAYLOAD_BYTES`` is not a
            positive integer.
        UnknownJobType: ``registry`` has no handler for ``job_type``.
        IdempotencyConflict: within the key's window, the key belongs to a different request
            (``existing_id`` names its job); nothing was written and the caller's
            transaction stays usable.
        TransactionAborted / ConnectionNotUsable: ``conn`` cannot take writes.
        SchemaNotMigrated: the ``runledger`` schema is not installed (told by a read before
            anything is written: the caller's transaction stays usable).
        DatabaseError: the database refused the write.
    """
    job = Job(
        job_type,
        payload,
        queue=queue,
        priority=priority,
        run_at=run_at,
        delay=delay,
        max_attempts=max_attempts,
        timeout_seconds=timeout_seconds,
        idempotency_key=idempotency_key,
        unique=unique,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
    )
    return _enqueue_jobs(conn, [job], registry, payload_limit(max_payload_bytes))[0]


def enqueue_many(
    conn: Conn,
    jobs: Iterable[Job],
    *,
    registry: HandlerCatalog | None = None,
    max_payload_bytes: int | None = None,
) -> list[uuid.UUID]:
    """Queue many jobs in the caller's transaction; return their ids in the input order.

    Same transaction rules and errors as ``enqueue``. Every job is validated before anything is
    written. Large batches without idempotency keys are written with COPY; others with one
    statement per ``BATCH_SIZE`` jobs. An idempotency conflict leaves none of this call's jobs
    written and the caller's transaction usable; a database error aborts the caller's
    transaction like any failed statement. Each payload is held to ``max_payload_bytes``.
    """
    return _enqueue_jobs(conn, list(jobs), registry, payload_limit(max_payload_bytes))


def _enqueue_jobs(
    conn: Conn, jobs: Sequence[Job], registry: HandlerCatalog | None, limit: int
) -> list[uuid.UUID]:
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"enqueue_many takes runledger.Job values, got {type(job)!r}")
    if not jobs:
        return []
    # Every payload is encoded and measured before anything is sent.
    payloads = [dumps_within(job.stored_payload, limit=limit) for job in jobs]
    trace_context = _trace_context_json()
    if len(jobs) >= COPY_THRESHOLD and all(job.idempotency_key is None for job in jobs):
        # Every job type is checked against the registry before anything is written.
        defaults = {t: _defaults(registry, t) for t in dict.fromkeys(j.job_type for j in jobs)}
        with writing(conn):
            return _copy_jobs(conn, jobs, payloads, defaults, trace_context)
    resolved = [_resolve(job, registry, i) for job, i in zip(jobs, new_ids(len(jobs)), strict=True)]
    keyed = any(r.job.idempotency_key is not None for r in resolved)
    with writing(conn):
        if keyed and len(resolved) > 1:
            with savepoint(conn, "runledger_enqueue"):
                return _insert_jobs(conn, resolved, payloads, trace_context)
        return _insert_jobs(conn, resolved, payloads, trace_context)


# Bulk path for batches without idempotency keys (nothing can conflict): COPY is about twice
# as fast as INSERT ... SELECT over arrays. The rows are formatted here as COPY text, in
# chunks the server parses while the next chunk is formatted: psycopg's write_row() adapts
# value by value and cost more than the server's own work. run_at is computed from the
# transaction's own now(), the value the INSERT path would use.
COPY_JOBS = """
copy runledger.jobs (
    id, queue, job_type, payload, priority, max_attempts, timeout_seconds, run_at)
from stdin
"""
COPY_TRACED_JOBS = """
copy runledger.jobs (
    id, queue, job_type, payload, priority, max_attempts, timeout_seconds, run_at,
    trace_context)
from stdin
"""
# Batches where a job has a concurrency key (its own or its handler's) add the two columns.
COPY_KEYED_JOBS = """
copy runledger.jobs (
    id, queue, job_type, payload, priority, max_attempts, timeout_seconds, run_at,
    concurrency_key, concurrency_limit)
from stdin
"""
COPY_TRACED_KEYED_JOBS = """
copy runledger.jobs (
    id, queue, job_type, payload, priority, max_attempts, timeout_seconds, run_at,
    concurrency_key, concurrency_limit, trace_context)
from stdin
"""
COPY_ENQUEUED_EVENTS = "copy runledger.events (kind, job_id) from stdin"
TRANSACTION_NOW = "select now()"
NOTIFY_QUEUES = f"""
select count(pg_notify('{JOBS}', queue)) from unnest(%(queues)s::text[]) as queue
"""
COPY_THRESHOLD = 50
COPY_CHUNK = 1_000  # rows per write: large enough to amortise the call, small enough to overlap


def _copy_jobs(
    conn: Conn,
    jobs: Sequence[Job],
    payloads: Sequence[str],
    defaults: dict[str, HandlerDefaults | None],
    trace_context: str | None,
) -> list[uuid.UUID]:
    now_row = conn.execute(TRANSACTION_NOW).fetchone()
    assert now_row is not None
    now: datetime.datetime = now_row[0]
    now_text = now.isoformat()
    ids = new_ids(len(jobs))
    queues: set[str] = set()
    # Keys (and handler key functions) are resolved before the COPY starts: an invalid one
    # raises with nothing sent.
    keys = [
        concurrency(j.job_type, j.payload, j.concurrency_key, j.concurrency_limit,
                    defaults[j.job_type])
        for j in jobs
    ]  # fmt: skip
    keyed = any(key is not None for key, _ in keys)
    if keyed:
        statement = COPY_KEYED_JOBS if trace_context is None else COPY_TRACED_KEYED_JOBS
    else:
        statement = COPY_JOBS if trace_context is None else COPY_TRACED_JOBS
    # One trace context for the whole call: a column only when there is one.
    trace_text = "" if trace_context is None else f"\t{copy_json_text(trace_context)}"
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for start in range(0, len(jobs), COPY_CHUNK):
                lines = []
                for job, job_id, payload, (key, limit) in zip(
                    jobs[start : start + COPY_CHUNK],
                    ids[start : start + COPY_CHUNK],
                    payloads[start : start + COPY_CHUNK],
                    keys[start : start + COPY_CHUNK],
                    strict=True,
                ):
                    queue, max_attempts, timeout_seconds = _options(job, defaults[job.job_type])
                    queues.add(queue)
                    if job.run_at is not None:
                        run_at = job.run_at.isoformat()
                    elif job.delay is None:
                        run_at = now_text
                    else:
                        delay = datetime.timedelta(seconds=job.delay_seconds or 0)
                        run_at = (now + delay).isoformat()
                    lines.append(
                        f"{job_id}\t{copy_text(queue)}\t{copy_text(job.job_type)}\t"
                        f"{copy_json_text(payload)}\t{job.priority}\t"
                        f"{copy_int(max_attempts)}\t{copy_int(timeout_seconds)}\t{run_at}"
                        + (f"\t{_copy_key(key)}\t{copy_int(limit)}" if keyed else "")
                        + f"{trace_text}\n"
                    )
                copy.write("".join(lines))
        with cur.copy(COPY_ENQUEUED_EVENTS) as copy:
            for start in range(0, len(ids), COPY_CHUNK):
                copy.write("".join(f"job.enqueued\t{i}\n" for i in ids[start : start + COPY_CHUNK]))
        cur.execute(NOTIFY_QUEUES, {"queues": sorted(queues)})
    return ids


def _limited(batch: Sequence[_Resolved]) -> bool:
    """Whether a job of ``batch`` has a concurrency key (the statement names the columns)."""
    return any(r.concurrency_key is not None for r in batch)


def _copy_key(key: str | None) -> str:
    return "\\N" if key is None else copy_text(key)


def _insert_jobs(
    conn: Conn, resolved: list[_Resolved], payloads: list[str], trace_context: str | None
) -> list[uuid.UUID]:
    inserted: set[uuid.UUID] = set()
    for start in range(0, len(resolved), BATCH_SIZE):
        batch = resolved[start : start + BATCH_SIZE]
        keyed = any(r.job.idempotency_key is not None for r in batch)
        statement = _INSERT_JOBS[trace_context is not None, keyed, _limited(batch)]
        inserted.update(
            _write(conn, statement, batch, payloads[start : start + BATCH_SIZE], trace_context)
        )
    ids = [r.id for r in resolved]
    skipped = [i for i, r in enumerate(resolved) if r.id not in inserted]
    if skipped:
        _resolve_conflicts(
            conn, resolved, skipped=skipped, ids=ids, payloads=payloads, trace_context=trace_context
        )
    return ids


def _write(
    conn: Conn,
    statement: str,
    batch: Sequence[_Resolved],
    payloads: Sequence[str],
    trace_context: str | None,
) -> list[uuid.UUID]:
    """Run one insert statement over ``batch``; return the ids of the jobs it wrote."""
    row = conn.execute(
        statement,
        {
            "ids": [r.id for r in batch],
            "queues": [r.queue for r in batch],
            "job_types": [r.job.job_type for r in batch],
            "payloads": "[" + ",".join(payloads) + "]",
            "priorities": [r.job.priority for r in batch],
            "max_attempts": [r.max_attempts for r in batch],
            "timeouts": [r.timeout_seconds for r in batch],
            "run_ats": [r.job.run_at for r in batch],
            "delays": [r.job.delay_seconds for r in batch],
            "keys": [r.job.idempotency_key for r in batch],
            "fingerprints": [
                r.fingerprint() if r.job.idempotency_key is not None else None for r in batch
            ],
            "concurrency_keys": [r.concurrency_key for r in batch],
            "concurrency_limits": [r.concurrency_limit for r in batch],
            "trace_context": trace_context,
        },
    ).fetchone()
    return [] if row is None or row[0] is None else list(row[0])


# A key passes on at most this many times during one enqueue before it gives up: each round
# either settles every key or lost a key to another enqueue that committed a job holding it.
_TAKE_OVER_ROUNDS = 10


def _resolve_conflicts(
    conn: Conn,
    resolved: list[_Resolved],
    *,
    skipped: list[int],
    ids: list[uuid.UUID],
    payloads: list[str],
    trace_context: str | None,
) -> None:
    """Settle each job whose key was held: return the holder while the job's unique window
    covers it (or raise on a different request); otherwise take the key over for the new job
    and write it. Every conflict is raised before this writes anything."""
    for _ in range(_TAKE_OVER_ROUNDS):
        rows = conn.execute(
            EXISTING_JOBS,
            {
                "job_types": [resolved[i].job.job_type for i in skipped],
                "keys": [resolved[i].job.idempotency_key for i in skipped],
            },
        ).fetchall()
        existing = {(r[0], r[1]): r[2:] for r in rows}
        takers: dict[tuple[str, str], int] = {}
        later: list[int] = []
        free: list[int] = []
        for i in skipped:
            item = resolved[i]
            scope, key = item.job.job_type, item.job.idempotency_key
            assert key is not None  # only keyed rows can be skipped
            found = existing.get((scope, key))
            if found is None:  # its job was deleted meanwhile, and the key with it
                free.append(i)
                continue
            holder, holder_fingerprint, live, created_at, now = found
            if created_at is not None and item.job.unique.holds(
                holder_live=live, holder_created_at=created_at, now=now
            ):
                if holder_fingerprint != item.fingerprint():
                    raise IdempotencyConflict(kind="job", scope=scope, key=key, existing_id=holder)
                ids[i] = holder
            elif (scope, key) in takers:
                later.append(i)  # the same key twice in one batch: the first one takes it
            else:
                takers[scope, key] = i
        written: set[uuid.UUID] = set()
        if free:
            batch = [resolved[i] for i in free]
            statement = _INSERT_JOBS[trace_context is not None, True, _limited(batch)]
            written.update(_write(conn, statement, batch, [payloads[i] for i in free],
                                  trace_context))  # fmt: skip
        order = list(takers.values())
        taken = (
            []
            if not order
            else conn.execute(
                TAKE_OVER_KEYS,
                {
                    "job_types": [resolved[i].job.job_type for i in order],
                    "keys": [resolved[i].job.idempotency_key for i in order],
                    "holders": [
                        existing[resolved[i].job.job_type, resolved[i].job.idempotency_key][0]
                        for i in order
                    ],
                    "ids": [resolved[i].id for i in order],
                    "if_finished": [
                        resolved[i].job.unique.mode is UniqueMode.ACTIVE for i in order
                    ],
                },
            ).fetchall()
        )
        won = {row[0] for row in taken}
        winners = [i for i in order if resolved[i].id in won]
        if winners:
            statement = INSERT_JOBS if trace_context is None else INSERT_TRACED_JOBS
            batch = [resolved[i] for i in winners]
            _write(conn, statement, batch, [payloads[i] for i in winners], trace_context)
        written.update(won)
        skipped = later + [i for i in order + free if resolved[i].id not in written]
        if not skipped:
            return
    raise DatabaseError(
        f"idempotency keys kept passing to other jobs during this enqueue "
        f"({_TAKE_OVER_ROUNDS} rounds); try again"
    )


def enqueue_workflow(
    conn: Conn,
    workflow: Workflow,
    registry: HandlerCatalog | None = None,
    *,
    max_payload_bytes: int | None = None,
) -> uuid.UUID:
    """Start a run of ``workflow`` in the caller's transaction and return the run's id.

    Writes the run, one row per step, the edges, a job for every root job step (root
    external steps start ``waiting``; the rest are ``blocked``), their events and a NOTIFY.
    Same transaction rules as ``enqueue``; a failure leaves the caller's transaction usable.
    With an idempotency key on the workflow, the same workflow again returns the existing run.
    The input and each step's payload are held to ``max_payload_bytes`` as in ``enqueue``.

    Raises:
        UnknownJobType: ``registry`` has no handler for a step's job type (before any write).
        PayloadTooLarge: the input or a step's payload is over the limit (before any write).
        IdempotencyConflict: the key already belongs to a different workflow request.
        SchemaNotMigrated: the ``runledger`` schema is not installed (the caller's
            transaction stays usable).
        TransactionAborted / ConnectionNotUsable / DatabaseError / ConfigError: as for
            ``enqueue``.
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(
            f"enqueue_workflow takes a built Workflow (WorkflowBuilder(...).build()), "
            f"got {type(workflow)!r}"
        )
    steps = [workflow.step(key) for key in workflow.order]
    defaults = {
        s.key: _defaults(registry, s.job_type, s.key)
        for s in steps
        if s.kind is StepKind.JOB and s.job_type is not None
    }
    run_id = new_id()
    statuses, job_ids = [], []
    for s in steps:
        if s.dependencies:
            status, job_id = StepStatus.BLOCKED, None
        elif s.kind is StepKind.EXTERNAL:
            status, job_id = StepStatus.WAITING, None
        else:
            status, job_id = StepStatus.QUEUED, new_id()
        statuses.append(str(status))
        job_ids.append(job_id)
    active = sum(1 for st in statuses if st == StepStatus.QUEUED)
    fp = workflow.fingerprint()
    limit = payload_limit(max_payload_bytes)
    run_input = dumps_within(workflow.input, limit=limit, root="$input")
    payloads = [
        dumps_within({} if s.payload is None else s.payload, limit=limit, step_key=s.key)
        if s.kind is StepKind.JOB
        else None
        for s in steps
    ]

    def pick(key: str, given: int | str | None, field: str) -> Any:
        found = defaults.get(key)
        return given or (found and getattr(found, field)) or None

    # A step's own key, else its handler's (a function of the step's payload), resolved now
    # and stored with the step: its job gets them when it is queued.
    keys = [
        concurrency(s.job_type, s.payload, s.concurrency_key, s.concurrency_limit,
                    defaults.get(s.key), step_key=s.key)
        if s.kind is StepKind.JOB and s.job_type is not None
        else (None, None)
        for s in steps
    ]  # fmt: skip
    trace_context = _trace_context_json()
    with writing(conn), savepoint(conn, "runledger_enqueue_workflow"):
        row = conn.execute(
            INSERT_RUN if trace_context is None else INSERT_TRACED_RUN,
            {
                "id": run_id,
                "name": workflow.name,
                "key": workflow.idempotency_key,
                "fingerprint": fp,
                "input": run_input,
                "result_step": workflow.result_step,
                "status": "running" if active else "waiting",
                "steps": len(steps),
                "active": active,
                "trace_context": trace_context,
            },
        ).fetchone()
        if row is None:
            assert workflow.idempotency_key is not None
            existing = conn.execute(
                EXISTING_RUN, {"name": workflow.name, "key": workflow.idempotency_key}
            ).fetchone()
            assert existing is not None  # the conflict means it exists and is visible
            if existing[1] != fp:
                raise IdempotencyConflict(
                    kind="workflow",
                    scope=workflow.name,
                    key=workflow.idempotency_key,
                    existing_id=existing[0],
                )
            return existing[0]  # type: ignore[no-any-return]
        is_job = [s.kind is StepKind.JOB for s in steps]
        if any(k[0] is not None for k in keys):
            statement = (
                INSERT_LIMITED_RUN_STEPS if trace_context is None
                else INSERT_TRACED_LIMITED_RUN_STEPS
            )  # fmt: skip
        else:
            statement = INSERT_RUN_STEPS if trace_context is None else INSERT_TRACED_RUN_STEPS
        conn.execute(
            statement,
            {
                "run_id": run_id,
                "name": workflow.name,
                "keys": [s.key for s in steps],
                "kinds": [str(s.kind) for s in steps],
                "job_types": [s.job_type for s in steps],
                "queues": [
                    pick(s.key, s.queue, "queue") or DEFAULT_QUEUE if j else None
                    for s, j in zip(steps, is_job, strict=True)
                ],
                "priorities": [
                    s.priority if s.priority is not None else DEFAULT_PRIORITY if j else None
                    for s, j in zip(steps, is_job, strict=True)
                ],
                "max_attempts": [pick(s.key, s.max_attempts, "max_attempts") for s in steps],
                "timeouts": [pick(s.key, s.timeout_seconds, "timeout_seconds") for s in steps],
                "payloads": payloads,
                "statuses": statuses,
                "deps": [len(s.dependencies) for s in steps],
                "job_ids": job_ids,
                "concurrency_keys": [k[0] for k in keys],
                "concurrency_limits": [k[1] for k in keys],
                "edge_steps": [s.key for s in steps for _ in s.dependencies],
                "edge_prerequisites": [d.prerequisite for s in steps for d in s.dependencies],
                "edge_modes": [str(d.mode) for s in steps for d in s.dependencies],
                "trace_context": trace_context,
            },
        )
    return run_id
