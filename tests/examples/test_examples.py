"""The examples run as a user runs them, against a fresh database of the test's own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The story examples/invoice.py tells: every event of the run, in the order it was written.
INVOICE_EVENTS = [
    ("run.enqueued", ""),
    ("step.queued", "fetch"),
    ("job.enqueued", "fetch"),
    ("job.started", "fetch"),
    ("job.succeeded", "fetch"),
    ("step.succeeded", "fetch"),
    ("step.queued", "validate"),
    ("job.enqueued", "validate"),
    ("job.started", "validate"),
    ("job.succeeded", "validate"),
    ("step.succeeded", "validate"),
    ("step.queued", "charge"),
    ("job.enqueued", "charge"),
    ("job.started", "charge"),
    ("job.succeeded", "charge"),
    ("step.succeeded", "charge"),
    ("step.waiting", "notify"),
    ("run.waiting", ""),
    ("step.succeeded", "notify"),
    ("run.succeeded", ""),
]

EVENT_LINE = re.compile(
    r"^ +\+\d+\.\d{3}s +(?P<kind>[a-z_]+\.[a-z_]+) +(?P<step>fetch|validate|charge|notify)?\b"
)


def test_invoice_example_tells_the_run_step_by_step(dsn: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": dsn}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "invoice.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "both calls returned run " in out
    assert "runledger.workflow_runs holds 1 run for this key" in out
    # Values are printed as a person reads them: no Python tuples, reprs or None.
    assert "(1,)" not in out
    assert "None" not in out

    events = [(m["kind"], m["step"] or "") for m in map(EVENT_LINE.match, out.splitlines()) if m]
    assert events == INVOICE_EVENTS, out

    # The ledger is shown at the three points where the run stands still, in that order.
    enqueued = out.index("-- runledger.workflow_step_runs after enqueue")
    waiting = out.index("-- runledger.workflow_step_runs while the run waits for the webhook")
    webhook = out.index('-- webhook: complete_external_step(conn, run_id, "notify"')
    final = out.index(
        '-- runledger.workflow_step_runs at the end: run succeeded, result {"charged": 4200}'
    )
    assert enqueued < waiting < webhook < final
    assert re.search(r"^fetch +job +queued +0", out[enqueued:waiting], re.M)
    assert re.search(r"^validate +job +blocked +1", out[enqueued:waiting], re.M)
    assert re.search(
        r"^charge +job +succeeded +0 +\{\"charged\": 4200\}", out[waiting:webhook], re.M
    )
    assert re.search(r"^notify +external +waiting +0", out[waiting:webhook], re.M)
    assert re.search(r"^notify +external +succeeded +0 +\{\"approved\": true\}", out[final:], re.M)
    assert "charges rows: 1" in out


def test_examples_cite_only_files_of_the_repository() -> None:
    # A citation of a design file outside the repository leaves a reader with nothing to open.
    for path in (ROOT / "examples").rglob("*"):
        if path.suffix in (".py", ".md"):
            assert "DESIGN.md" not in path.read_text(), path
