"""The console script as the CLI tests run it, how they read its output, and the ledger rows
they make for it to show.

``Cli`` runs ``python -m runledger.cli`` in a subprocess (or ``main`` in this process, for
the cheap variations of a command that a subprocess test already covers). ``parse_table``
reads a table back and asserts its alignment. ``Ledger`` claims and finishes jobs through the
SQL layer (as the runtime does), one committed transaction per call, so that statuses,
attempts and durations are real.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import psycopg

from runledger import AttemptOutcome, JobStatus
from runledger.cli import main
from runledger.core.status import RetryReason
from runledger.postgres.attempts import AttemptResult, ClaimedJob, claim, finish

WORKER = "cli-test-worker"


@attrs.frozen
class Cli:
    """Runs the console script on one database: as a user would, in a subprocess, or (for the
    quick variations of a command already run that way) in this process."""

    dsn: str

    def bare(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m runledger.cli ARGS`` with no DSN from the environment (plus ``env``).

        Output is UTF-8 whatever the machine's locale, so the tree's glyphs are predictable.
        """
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
        environ.pop("DATABASE_URL", None)
        environ["PYTHONIOENCODING"] = "utf-8"
        environ.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "runledger.cli", *args],
            env=environ,
            capture_output=True,
            encoding="utf-8",
            timeout=60,
            check=False,
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m runledger.cli ARGS`` on the test's database (``RUNLEDGER_DSN``)."""
        return self.bare(*args, env={"RUNLEDGER_DSN": self.dsn})

    def inline(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``runledger --dsn DSN ARGS`` through ``runledger.cli.main`` in this process."""
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        err = io.StringIO()
        argv = ["--dsn", self.dsn, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's usage errors
                code = int(exit_.code or 0)
        out.flush()
        stdout = out.buffer.getvalue().decode("utf-8")
        return subprocess.CompletedProcess(argv, code, stdout, err.getvalue())


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded quietly."""
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stderr == ""
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The stderr of a command that must have exited with ``code``, cleanly."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


def parse_table(text: str, *, tree: bool = False) -> list[dict[str, str]]:
    """The rows of an aligned table as {header: cell}, asserting its alignment.

    Headers are separated by at least two spaces; every non-empty cell must start exactly
    at its header's column, after a blank gap. With ``tree``, the first column's cells may
    start with the tree's indentation.
    """
    header, *lines = text.rstrip("\n").splitlines()
    found = list(re.finditer(r"\S+(?: \S+)*", header))  # names with single inner spaces
    names = [match.group() for match in found]
    starts = [match.start() for match in found]
    assert starts[0] == 0, header
    rows = []
    for line in lines:
        cells = {}
        for i, (name, start) in enumerate(zip(names, starts, strict=True)):
            end = starts[i + 1] if i + 1 < len(starts) else None
            cell = line[start:end]
            if i > 0 and len(line) > start:
                assert line[start - 2 : start] == "  ", (line, name)
            if cell.strip() and not (tree and i == 0):
                assert cell[0] != " ", (line, name)
            cells[name] = cell.rstrip() if tree and i == 0 else cell.strip()
        rows.append(cells)
    return rows


def split_sections(text: str) -> list[str]:
    """The blocks of a detail view (separated by blank lines)."""
    return [block for block in text.split("\n\n") if block.strip()]


def parse_fields(block: str) -> dict[str, str]:
    """A key/value block (keys may contain single spaces; two spaces end a key)."""
    pairs = {}
    for line in block.splitlines():
        key, _, value = line.partition("  ")
        pairs[key] = value.strip()
    return pairs


def parse_time(text: str) -> datetime.datetime:
    """An ISO-8601 time from JSON output; it must carry a UTC offset."""
    moment = datetime.datetime.fromisoformat(text)
    assert moment.utcoffset() == datetime.timedelta(0), text
    return moment


@attrs.define
class Ledger:
    """Makes job history through the SQL layer, one committed transaction per call."""

    conn: psycopg.Connection[Any]

    def claim(self, job_type: str, *, queue: str = "default") -> ClaimedJob:
        """Claim the one due job of ``job_type`` on ``queue``."""
        with self.conn.transaction():
            jobs = claim(
                self.conn,
                worker=WORKER,
                queues=[queue],
                job_types=[job_type],
                limit=1,
                lease_seconds=300,
            )
        assert len(jobs) == 1, f"no {job_type} job to claim on {queue}"
        return jobs[0]

    def succeed(self, job: ClaimedJob, output: Any = None) -> None:
        """Finish an attempt successfully."""
        self._finish(
            AttemptResult(
                job_id=job.id,
                lease_token=job.lease_token,
                status=JobStatus.SUCCEEDED,
                outcome=AttemptOutcome.SUCCEEDED,
                output=output,
            )
        )

    def fail(self, job: ClaimedJob, *, retry: bool, message: str = "it broke") -> None:
        """Fail an attempt: retry it at once, or fail the job for good."""
        self._finish(
            AttemptResult(
                job_id=job.id,
                lease_token=job.lease_token,
                status=JobStatus.QUEUED if retry else JobStatus.FAILED,
                outcome=AttemptOutcome.FAILED,
                error_type="BoomError",
                error_message=message,
                traceback=f"Traceback (most recent call last):\nBoomError: {message}\n",
                retry_reason=RetryReason.POLICY if retry else None,
            )
        )

    def _finish(self, result: AttemptResult) -> None:
        with self.conn.transaction():
            report = finish(self.conn, [result])
        assert not report.lost

    def backdate(self, job_id: uuid.UUID, attempt: int, seconds: float) -> None:
        """Make an attempt have started ``seconds`` before it finished (or before now)."""
        self.conn.execute(
            "update runledger.job_attempts "
            "set started_at = coalesce(finished_at, now()) - make_interval(secs => %s) "
            "where job_id = %s and attempt = %s",
            (seconds, job_id, attempt),
        )

    def age_job(self, job_id: uuid.UUID, seconds: float) -> None:
        """Move every time of a job ``seconds`` into the past."""
        self.conn.execute(
            "update runledger.jobs set created_at = created_at - make_interval(secs => %(s)s), "
            "run_at = run_at - make_interval(secs => %(s)s), "
            "finished_at = finished_at - make_interval(secs => %(s)s) where id = %(id)s",
            {"s": seconds, "id": job_id},
        )

    def status(self, job_id: uuid.UUID) -> str:
        """The job's committed status."""
        row = self.conn.execute(
            "select status from runledger.jobs where id = %s", (job_id,)
        ).fetchone()
        assert row is not None
        return str(row[0])
