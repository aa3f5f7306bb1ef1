"""Retrying a workflow-wide write whose late-found jobs are locked by someone else.

``cancel_workflow`` and ``retry_workflow`` lock a run's jobs first, in the ledger's lock order
(jobs, then steps, then the run). A job released while they held the steps is found late:
taking its lock then would be out of order, so it is taken with NOWAIT, and if someone holds
it the whole write is undone to a savepoint and tried again after a short pause.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from runledger.errors import DatabaseError
from runledger.postgres.connection import Conn, savepoint, writing

T = TypeVar("T")

RETRY_FOR_SECONDS = 10.0
"""How long a write that keeps meeting late jobs locked by others tries again."""


class LateJobLocked(Exception):
    """A job found late is locked by someone else: undo to the savepoint and try again."""


def retried_in_savepoint(
    conn: Conn, name: str, write: Callable[[], T], *, verb: str, run_id: uuid.UUID
) -> T:
    """Run ``write`` in the caller's transaction (``writing``) inside savepoint ``name``,
    again from the savepoint each time it raises ``LateJobLocked``, pausing 2 ms doubling
    to 100 ms.

    Raises:
        DatabaseError: the jobs stayed locked for ``RETRY_FOR_SECONDS`` (the message says
            "could not ``verb`` run ``run_id``").
    """
    deadline = time.monotonic() + RETRY_FOR_SECONDS
    pause = 0.002
    with writing(conn):
        while True:
            try:
                with savepoint(conn, name):
                    return write()
            except LateJobLocked as err:
                if time.monotonic() > deadline:
                    raise DatabaseError(
                        f"could not {verb} run {run_id}: its jobs stayed locked for "
                        f"{RETRY_FOR_SECONDS:.0f} s; try again"
                    ) from err
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
