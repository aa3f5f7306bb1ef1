"""The NOTIFY channels runledger's statements signal and its runtimes LISTEN on.

Each name is defined here once; the SQL constants that ``pg_notify`` a channel are built from
these at import time, and the runtime's listener and ``wait_for_run`` subscribe to the same.
No migration NOTIFYs (tests/unit/test_channels.py checks it), so nothing in ``sql/``
repeats a name. Renaming a channel breaks running workers of an older version: they would
LISTEN on the old name (they still poll, so jobs are only picked up later, never lost).
"""

from __future__ import annotations

from typing import Final

JOBS: Final = "runledger_jobs"
"""Jobs became runnable; the payload is the queue name. Workers wake up to claim."""

CANCEL: Final = "runledger_cancel"
"""A running job was cancelled; the payload is its id. Runtimes set its ``ctx.cancelled``."""

RUNS: Final = "runledger_runs"
"""A workflow run reached a final status; the payload is its id. ``wait_for_run`` returns."""

ALL: Final = (JOBS, CANCEL, RUNS)
"""Every channel, for checks."""
