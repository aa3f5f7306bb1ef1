"""Keeping the hot tables lean: a VACUUM of ``runledger.jobs`` when dead rows pile up.

Every claim and completion leaves dead index entries at the head of ``jobs_runnable`` that
later claims step over, and autovacuum comes at most once per ``autovacuum_naptime`` (a minute
by default), so runtimes vacuum the table themselves once its dead rows pass a count (not a
share of the live rows, which kept history can make millions); an advisory lock keeps it to
one runtime at a time, and the reaper paces it by its cost (``runledger.runtime.reaper``). The
same VACUUM analyzes the table when the rows changed since its last ANALYZE pass half of those it
holds and the dead rows' count (a bulk enqueue, a table never analyzed): a VACUUM records the
table's new row count, and without column statistics to go with it the claim's plan sorted
every queued job (0.6 s a claim at a million queued, PostgreSQL 15, autovacuum off).
Figures: ``benchmarks/README.md``, "Why the code is shaped so".
"""

from __future__ import annotations

from runledger.postgres.store import Store

# b"rlvacuum" as a big-endian int, minus 2**63: shared by every runtime.
VACUUM_LOCK_KEY = 0x726C76616375756D - 2**63
"""Held (session-scoped, try-lock) around a VACUUM of ``runledger.jobs``: one runtime at a time."""
# b"rlvachis", the same way.
VACUUM_HISTORY_LOCK_KEY = 0x726C766163686973 - 2**63
"""Held around the pruner's VACUUMs of the history tables. A key of its own: a VACUUM of a
large history can take seconds, and the hot table's VACUUM must not skip its turn meanwhile
(its dead rows would pile up for another ``VACUUM_EVERY`` and grow its heap)."""

ANALYZE_MIN_LIVE = 10_000
"""Live rows below which the hot table is not analyzed for being stale (only if it never was):
a plan over a few thousand rows costs little either way, while every ANALYZE of
``runledger.jobs`` also samples ``job_history`` for the statistics of the whole tree."""

DEAD_ROWS = f"""
select coalesce(n_dead_tup, 0),
       n_mod_since_analyze >= greatest(n_live_tup / 2, %(min_dead)s)
       and (n_live_tup >= {ANALYZE_MIN_LIVE}
            or coalesce(last_analyze, last_autoanalyze) is null)
from pg_stat_user_tables
where schemaname = 'runledger' and relname = 'jobs'
"""
TRY_LOCK = "select pg_try_advisory_lock(%(key)s)"
UNLOCK = "select pg_advisory_unlock(%(key)s)"
# From PostgreSQL 18 a VACUUM of a parent also vacuums its inheritance children unless told
# ONLY; before 18 it never does, and ONLY is a syntax error.
# Templates, in lower case: not SQL constants.
_vacuum_jobs = "vacuum (index_cleanup on) {only}runledger.jobs"
_vacuum_analyze_jobs = "vacuum (analyze, index_cleanup on) {only}runledger.jobs"
ONLY_FROM_VERSION = 180000

SETTLE = "select runledger.settle_finished_jobs(%(limit)s)"
SETTLE_BATCH = 2_000
"""Finished rows moved from the hot table to ``job_history`` per transaction."""


def _only(server_version: int) -> str:
    return "only " if server_version >= ONLY_FROM_VERSION else ""


def vacuum_jobs_if_needed(store: Store, *, min_dead: int = 5_000) -> bool:
    """VACUUM ``runledger.jobs`` if its dead rows exceed ``min_dead`` or its statistics are
    stale (then with ANALYZE), and no other runtime is vacuuming it; return True if this call
    vacuumed.

    Runs outside any transaction (VACUUM cannot run in one) on a pooled connection; blocks
    for the VACUUM (well under a second for a queue's hot rows; about a second beside 8
    million finished jobs, whose indexes it scans too).
    """
    with store.connection() as conn:
        row = conn.execute(DEAD_ROWS, {"min_dead": min_dead}).fetchone()
        conn.rollback()
        if row is None:
            return False
        dead, stale = row
        if dead < min_dead and not stale:
            return False
        conn.autocommit = True
        try:
            locked = conn.execute(TRY_LOCK, {"key": VACUUM_LOCK_KEY}).fetchone()
            if not locked or not locked[0]:
                return False
            try:
                command = _vacuum_analyze_jobs if stale else _vacuum_jobs
                conn.execute(command.format(only=_only(conn.info.server_version)).encode())
            finally:
                conn.execute(UNLOCK, {"key": VACUUM_LOCK_KEY})
        finally:
            conn.autocommit = False
    return True


def settle_finished_jobs(store: Store, *, limit: int = SETTLE_BATCH) -> int:
    """Move up to ``limit`` finished jobs still in the hot table (finished before schema
    version 6, or inserted finished by hand) to ``runledger.job_history``; return how many.

    One transaction on a pooled connection; skips rows others hold. Jobs finished by the
    runtime or the API move in their own transaction and never wait for this.
    """
    with store.transaction() as conn:
        row = conn.execute(SETTLE, {"limit": limit}).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


# The history tables the pruner deletes from, beside jobs (which the reaper vacuums).
HISTORY_TABLES = (
    "job_history",
    "job_attempts",
    "events",
    "workflow_runs",
    "workflow_step_runs",
    "workflow_step_deps",
)
HISTORY_DEAD_FRACTION = 0.1
"""A history table is vacuumed once its dead rows reach this fraction of its live rows (and
``min_dead``): each VACUUM scans all of the table's indexes, so vacuuming at a fixed count
would scan an ever larger history for every round's few thousand pruned rows."""
# A partitioned table (the events, since schema version 12) counts the rows of its partitions.
DEAD_HISTORY_ROWS = """
select coalesce(p.relname, s.relname) as name
from pg_stat_user_tables as s
left join pg_inherits as i on i.inhrelid = s.relid
left join pg_class as p on p.oid = i.inhparent and p.relkind = 'p'
where s.schemaname = 'runledger' and coalesce(p.relname, s.relname) = any(%(tables)s)
group by 1
having sum(s.n_dead_tup) >= greatest(%(min_dead)s, sum(s.n_live_tup) * %(fraction)s)
order by 1
"""
# Table names come from HISTORY_TABLES only, never from input.
VACUUM_HISTORY = {name: f"vacuum runledger.{name}" for name in HISTORY_TABLES}


def vacuum_history_if_needed(
    store: Store, *, min_dead: int = 5_000, fraction: float = HISTORY_DEAD_FRACTION
) -> list[str]:
    """VACUUM each history table (``HISTORY_TABLES``) with at least ``min_dead`` dead rows and
    ``fraction`` of its live rows dead, unless another runtime is vacuuming them
    (``VACUUM_HISTORY_LOCK_KEY``; the hot table's VACUUM has a lock of its own); return the
    tables vacuumed.

    The pruner calls it after deleting: on a server without autovacuum (some managed ones)
    the space of pruned rows would never be reused and the tables would grow for ever. Runs
    outside any transaction on a pooled connection; blocks for the VACUUMs (each reads the
    table's pages that changed since the last one, and its indexes).
    """
    with store.connection() as conn:
        rows = conn.execute(
            DEAD_HISTORY_ROWS,
            {"tables": list(HISTORY_TABLES), "min_dead": min_dead, "fraction": fraction},
        ).fetchall()
        conn.rollback()
        due = [row[0] for row in rows]
        if not due:
            return []
        conn.autocommit = True
        try:
            locked = conn.execute(TRY_LOCK, {"key": VACUUM_HISTORY_LOCK_KEY}).fetchone()
            if not locked or not locked[0]:
                return []
            try:
                for name in due:
                    conn.execute(VACUUM_HISTORY[name].encode())
            finally:
                conn.execute(UNLOCK, {"key": VACUUM_HISTORY_LOCK_KEY})
        finally:
            conn.autocommit = False
    return due
