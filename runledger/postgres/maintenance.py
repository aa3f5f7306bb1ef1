"""Keeping the hot tables lean: a VACUUM of ``runledger.jobs`` when dead rows pile up.

Every claim turns a queued row into a running one and every completion into a finished one,
leaving dead index entries at the head of ``jobs_runnable`` that each claim must step over.
The migration tunes per-table autovacuum, but autovacuum visits a database at most once per
``autovacuum_naptime`` (a minute by default), during which a busy queue slows down. Runtimes
therefore vacuum the table themselves when its dead rows outnumber a threshold; an advisory
lock keeps it to one runtime at a time, and VACUUM blocks neither claims nor completions.

The threshold is a count of dead rows, not a share of the live ones: the table also keeps the
finished jobs a deployment has not deleted yet, and a share of millions of them would let the
head of ``jobs_runnable`` decay for a long while between two VACUUMs (``benchmarks/HISTORY.md``,
"A kept history"). What a VACUUM of such a table costs (it scans every index of it) is paced
by the reaper instead (``runledger.runtime.reaper``).
"""

from __future__ import annotations

from runledger.postgres.store import Store

# b"rlvacuum" as a big-endian int, minus 2**63: shared by every runtime.
VACUUM_LOCK_KEY = 0x726C76616375756D - 2**63

DEAD_ROWS = """
select coalesce(n_dead_tup, 0)
from pg_stat_user_tables
where schemaname = 'runledger' and relname = 'jobs'
"""
TRY_LOCK = "select pg_try_advisory_lock(%(key)s)"
UNLOCK = "select pg_advisory_unlock(%(key)s)"
VACUUM_JOBS = "vacuum (index_cleanup on) runledger.jobs"


def vacuum_jobs_if_needed(store: Store, *, min_dead: int = 5_000) -> bool:
    """VACUUM ``runledger.jobs`` if its dead rows exceed ``min_dead`` and no other runtime is
    vacuuming it; return True if this call vacuumed.

    Runs outside any transaction (VACUUM cannot run in one) on a pooled connection; blocks
    for the VACUUM (well under a second for a queue's hot rows; about a second beside 8
    million finished jobs, whose indexes it scans too).
    """
    with store.connection() as conn:
        row = conn.execute(DEAD_ROWS).fetchone()
        conn.rollback()
        if row is None or row[0] < min_dead:
            return False
        conn.autocommit = True
        try:
            locked = conn.execute(TRY_LOCK, {"key": VACUUM_LOCK_KEY}).fetchone()
            if not locked or not locked[0]:
                return False
            try:
                conn.execute(VACUUM_JOBS)
            finally:
                conn.execute(UNLOCK, {"key": VACUUM_LOCK_KEY})
        finally:
            conn.autocommit = False
    return True
