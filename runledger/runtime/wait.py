"""``wait_for_run``: block until a workflow run finishes."""

from __future__ import annotations

import time
import uuid

from runledger.errors import RunNotFinished
from runledger.postgres.channels import RUNS
from runledger.postgres.listener import listening
from runledger.postgres.reads import get_workflow_run
from runledger.postgres.records import WorkflowRunRecord
from runledger.postgres.store import Store


def wait_for_run(
    store: Store | str, run_id: uuid.UUID, timeout: float, *, poll_interval: float = 1.0
) -> WorkflowRunRecord:
    """Wait until run ``run_id`` reaches a final status and return it.

    LISTENs for the run's completion on a connection of its own and polls every
    ``poll_interval`` seconds as well, so a missed notification costs at most that long.
    Blocks up to ``timeout`` seconds; thread-safe.

    Raises:
        RunNotFinished: the run is still going after ``timeout`` (carries its last state).
        WorkflowRunNotFound: there is no such run.
    """
    conninfo = store if isinstance(store, str) else store.conninfo
    deadline = time.monotonic() + timeout
    # Unprepared (listening's connection): through PgBouncer in transaction mode a poll may
    # land on a server connection that never saw a statement prepared by an earlier one.
    with listening(conninfo, [RUNS]) as conn:
        while True:
            run = get_workflow_run(conn, run_id)
            if run.status.is_terminal:
                return run
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunNotFinished(run_id=run_id, status=str(run.status), timeout=timeout)
            for note in conn.notifies(timeout=min(poll_interval, left)):
                if note.payload == str(run_id):
                    break
