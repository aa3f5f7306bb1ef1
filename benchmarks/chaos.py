"""Faults at scale: 4 ``runledger worker`` processes work through 20,000 jobs while, one after
the other, a SIGKILL storm (one worker killed and replaced every 2 s for 10 s), a server
restart and a 20 s terminate storm (``pg_terminate_backend`` of every runledger backend once
a second) strike. Prints, per fault, the jobs lost, the effects committed twice through
``ctx.conn``, the handler executions beyond one per job, the jobs stuck ``running``, the
recovery time and the throughput before, during and after it. See benchmarks/README.md.

    python benchmarks/chaos.py            # about two minutes; a new embedded server of its own
    python benchmarks/chaos.py --quick    # 6,000 jobs and shorter faults: a smoke test

It always starts its own embedded server (it restarts it), never one given by a DSN.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
from _chaos import (
    EFFECTS_TABLE,
    TERMINATE_OTHERS,
    UNFINISHED,
    Control,
    OwnServer,
    Verdict,
    Workers,
    check,
    chunks,
    create_database,
    enqueue_workflow,
    handler_runs,
    in_flight,
    jobs,
    resolved_after,
    storm,
    wait_until_finished,
)

import runledger

BEFORE = 5.0
"""Seconds of work measured before each fault."""
AFTER = 10.0
"""Seconds after each fault before the next one's ``BEFORE`` window (recovery included)."""
STORM_TARGET = 0.5
"""The issue's target: through a terminate storm, at least half the pre-storm throughput."""


@attrs.define
class Phase:
    """One fault: its name, when it struck (epoch seconds) and what the script saw."""

    name: str
    start: float = 0.0
    end: float = 0.0
    strikes: int = 0
    recovery: float | None = None
    detail: str = ""

    def span(self) -> tuple[float, float]:
        """The times attributed to this fault: from its before window to its after window."""
        return self.start - BEFORE, self.end + AFTER


@attrs.frozen(kw_only=True)
class Options:
    jobs: int
    workers: int
    concurrency: int
    handler_seconds: float
    lease_seconds: float
    kill_every: float
    kill_seconds: float
    storm_every: float
    storm_seconds: float


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6,000 jobs, shorter faults")
    parser.add_argument("--jobs", type=int, default=None, help="jobs (default 20,000)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="per worker (default 4)")
    parser.add_argument(
        "--handler-seconds",
        type=float,
        default=0.06,
        help="each handler waits this long (default 0.06: the queue lasts through every fault)",
    )
    parser.add_argument("--lease", type=float, default=3.0, help="lease seconds (default 3)")
    args = parser.parse_args(argv)
    quick = args.quick
    options = Options(
        jobs=args.jobs or (6_000 if quick else 20_000),
        workers=args.workers,
        concurrency=args.concurrency,
        handler_seconds=args.handler_seconds if not quick else 0.1,
        lease_seconds=args.lease,
        kill_every=2.0,
        kill_seconds=4.0 if quick else 10.0,
        storm_every=1.0,
        storm_seconds=5.0 if quick else 20.0,
    )
    # A SIGTERM (a run stopped with `kill` or `timeout`) would end the process without the
    # finally blocks below and leave the server and workers running: unwind like Ctrl-C.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    server = OwnServer()
    try:
        dsn = create_database(server.dsn, "runledger_chaos")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(EFFECTS_TABLE)
            version = conn.execute("select version()").fetchone()
        print(f"server:   {version[0] if version else '?'} (embedded, its own)")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"machine:  {os.cpu_count()} cores, {platform.machine()}, load average {load}; "
            f"Python {platform.python_version()}, runledger {runledger.__version__}"
        )
        print(
            f"workload: {options.jobs:,} jobs (every other one writes an effect through "
            f"ctx.conn), handlers of {options.handler_seconds * 1000:.0f} ms, "
            f"{options.workers} worker processes x concurrency {options.concurrency}, "
            f"lease {options.lease_seconds:g} s"
        )
        with tempfile.TemporaryDirectory(prefix="runledger-chaos-") as directory:
            return run(server, dsn, Path(directory), options)
    finally:
        server.stop()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(server: OwnServer, dsn: str, directory: Path, options: Options) -> int:
    """Enqueue the jobs, start the workers, strike the three faults, print the table; the
    exit status (1 when an invariant broke)."""
    chaos = Chaos(server, options, Control(dsn), Workers(
        dsn, directory, concurrency=options.concurrency, lease_seconds=options.lease_seconds
    ))  # fmt: skip
    try:
        return chaos.run()
    finally:
        chaos.workers.stop(timeout=30)
        chaos.control.close()


@attrs.define
class Chaos:
    """One run of the benchmark: the server, the driver's connection, the workers."""

    server: OwnServer
    options: Options
    control: Control
    workers: Workers
    workflows: int = 0
    phases: list[Phase] = attrs.field(factory=list)
    dry: list[str] = attrs.field(factory=list)

    def run(self) -> int:
        backlog = jobs(self.options.jobs, seconds_each=self.options.handler_seconds)
        for part in chunks(backlog, 10_000):
            self.control.run(lambda conn, part=part: runledger.enqueue_many(conn, part))
        for _ in range(10):
            self.add_workflow()
        self.workers.start(self.options.workers)
        _wait(self.control, self.workers, "select count(*) >= 200 from runledger.jobs "
              "where status = 'succeeded'", timeout=60)  # fmt: skip

        self.strike(Phase("kill storm"), self.kill_storm)
        self.strike(Phase("server restart"), self.restart)
        self.strike(Phase("terminate storm"), self.terminate_storm)

        finished = wait_until_finished(self.control, timeout=600)
        self.workers.check()
        codes = self.workers.stop()
        verdict = self.control.run(lambda conn: check(conn, self.workers.runs))
        succeeded = self.control.run(
            lambda conn: [
                float(row[0])
                for row in conn.execute(
                    "select extract(epoch from occurred_at) from runledger.events "
                    "where kind = 'job.succeeded' order by 1"
                )
            ]
        )
        late = self.control.run(_late_records)
        print_table(self.phases, verdict, succeeded, handler_runs(self.workers.runs), late)
        problems = verdict.problems()
        if finished is None:
            problems.append("jobs still unfinished 600 s after the last fault")
        if any(codes):
            problems.append(f"workers exited with {codes} after SIGTERM")
        if self.dry:
            print(
                f"note: the queue was empty by the end of {', '.join(self.dry)}: "
                "the after-throughput there is a floor (raise --jobs)"
            )
        for problem in problems:
            print(f"PROBLEM: {problem}")
        return 1 if problems else 0

    def add_workflow(self) -> None:
        self.workflows += 1
        enqueue_workflow(
            self.control, f"wf-{self.workflows}", seconds_each=self.options.handler_seconds
        )

    def strike(self, phase: Phase, fault: Callable[[Phase], None]) -> None:
        """``BEFORE`` s of work, the fault, then its recovery within ``AFTER`` s of work."""
        _pace(BEFORE, self.workers)
        phase.start = time.time()
        fault(phase)
        phase.end = time.time()
        attempts = in_flight(self.control)
        phase.recovery = resolved_after(self.control, attempts, timeout=120)
        _pace(max(0.0, phase.end + AFTER - time.time()), self.workers)
        if self.control.scalar(UNFINISHED) == 0:
            self.dry.append(phase.name)
        self.phases.append(phase)
        print(f"  {phase.name}: {phase.detail}", flush=True)

    def kill_storm(self, phase: Phase) -> None:
        def kill() -> int:
            self.add_workflow()
            return self.workers.kill_one()

        phase.strikes = len(storm(self.options.kill_every, self.options.kill_seconds, kill))
        phase.detail = f"{phase.strikes} workers SIGKILLed and replaced"

    def restart(self, phase: Phase) -> None:
        took = self.server.restart()
        self.add_workflow()
        phase.strikes = 1
        phase.detail = f"pg_ctl restart -m fast took {took:.2f} s"

    def terminate_storm(self, phase: Phase) -> None:
        def strike() -> int:
            self.add_workflow()
            return int(self.control.scalar(TERMINATE_OTHERS))

        ended = storm(self.options.storm_every, self.options.storm_seconds, strike)
        phase.strikes = len(ended)
        phase.detail = (
            f"{len(ended)} strikes ended {sum(ended)} backends ({min(ended)}-{max(ended)} each)"
        )


def _pace(seconds: float, workers: Workers) -> None:
    """Let ``seconds`` pass (the benchmark's timeline), checking the workers every 0.5 s."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        workers.check()
        time.sleep(min(0.5, left))


def _wait(control: Control, workers: Workers, query: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not control.scalar(query):
        workers.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s: {query}")
        time.sleep(0.1)


def _late_records(conn: psycopg.Connection[Any]) -> dict[str, list[float]]:
    """Times (epoch) to attribute the per-job findings to a fault: for each unsuccessful or
    running job its last attempt's start, for each job with duplicated effects its first."""
    unsuccessful = [
        float(row[0])
        for row in conn.execute(
            "select extract(epoch from coalesce(max(a.started_at), j.created_at)) "
            "from runledger.jobs as j left join runledger.job_attempts as a on a.job_id = j.id "
            "where j.status <> 'succeeded' group by j.id, j.created_at"
        )
    ]
    running = [
        float(row[0])
        for row in conn.execute(
            "select extract(epoch from started_at) from runledger.jobs where status = 'running'"
        )
    ]
    # A second effect of a job is charged, like an extra execution, to the time of the first.
    duplicates = [
        float(row[0])
        for row in conn.execute(
            "select extract(epoch from min(written_at)) from public.chaos_effects "
            "group by job_id having count(*) > 1"
        )
    ]
    return {"lost": unsuccessful, "stuck": running, "duplicated": duplicates}


def _rate(times: Sequence[float], start: float, end: float) -> float:
    """Events per second among the sorted ``times`` in [start, end)."""
    if end <= start:
        return 0.0
    count = bisect.bisect_left(times, end) - bisect.bisect_left(times, start)
    return count / (end - start)


def _within(times: Sequence[float], span: tuple[float, float]) -> int:
    return sum(1 for t in times if span[0] <= t < span[1])


def print_table(
    phases: Sequence[Phase],
    verdict: Verdict,
    succeeded: Sequence[float],
    runs: Sequence[tuple[Any, int, float]],
    late: dict[str, list[float]],
) -> None:
    """The per-fault table, the totals and the storm's target line."""
    # An extra execution is charged to the fault that cut short the run before it, so it is
    # counted at that run's start: the run again itself comes later, often at the end, since
    # a job back in the queue waits behind the older backlog.
    by_job: dict[Any, list[float]] = collections.defaultdict(list)
    for job_id, _, at in runs:
        by_job[job_id].append(at)
    extra = sorted(t for times in by_job.values() for t in sorted(times)[:-1])
    print()
    print(
        f"{'fault':<16}{'lost':>6}{'dup effects':>13}{'extra execs':>13}{'stuck':>7}"
        f"{'recovery s':>12}{'before':>9}{'during':>9}{'after':>9}{'during/before':>15}"
    )
    storm_ratio = None
    for phase in phases:
        span = phase.span()
        before = _rate(succeeded, phase.start - BEFORE, phase.start)
        during = _rate(succeeded, phase.start, phase.end)
        after = _rate(succeeded, phase.end, phase.end + AFTER)
        ratio = during / before if before else 0.0
        if phase.name == "terminate storm":
            storm_ratio = ratio
        recovery = "never" if phase.recovery is None else f"{phase.recovery:.1f}"
        print(
            f"{phase.name:<16}{_within(late['lost'], span):>6}"
            f"{_within(late['duplicated'], span):>13}{_within(extra, span):>13}"
            f"{_within(late['stuck'], span):>7}{recovery:>12}"
            f"{before:>9,.0f}{during:>9,.0f}{after:>9,.0f}{ratio:>15.2f}"
        )
    print(
        f"{'whole run':<16}{verdict.lost:>6}{verdict.duplicated_effects:>13}"
        f"{verdict.extra_executions:>13}{verdict.running:>7}"
    )
    print(
        f"\n{verdict.jobs:,} jobs ({verdict.runs} workflow runs of 4 steps included): "
        f"{verdict.statuses}; {verdict.executions:,} handler executions; "
        f"{verdict.missing_effects} succeeded effect jobs without their effect; "
        f"{len(verdict.incoherent_runs)} incoherent runs"
    )
    print(
        "throughput: jobs/s succeeded (job.succeeded events) in the "
        f"{BEFORE:g} s before the fault, during it, and in the {AFTER:g} s after it. recovery: "
        "seconds from the fault's end until every attempt running at that moment has "
        "finished or been reaped (its lease expired, the reaper took it)."
    )
    if storm_ratio is not None:
        met = "met" if storm_ratio >= STORM_TARGET else "NOT met"
        print(
            f"terminate storm: {storm_ratio:.2f} of the pre-storm throughput "
            f"(target >= {STORM_TARGET:.2f}): {met}"
        )


if __name__ == "__main__":
    sys.exit(main())
