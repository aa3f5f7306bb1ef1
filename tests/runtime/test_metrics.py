"""``/metrics``, scraped by a real HTTP client from a runtime (``metrics_port``) and from
``runledger worker --metrics-port``: outcome counters, handler durations, the in-flight gauges
and the queue depth; nothing of ``prometheus_client`` imported unless metrics are asked for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import runledger
from runledger.errors import ConfigError, MissingExtra
from tests.runtime.conftest import RuntimeFactory, WaitForJob, WaitUntil
from tests.runtime.test_interrupted_claim import break_a_waiting_claim
from tests.runtime.test_reaper import fake_claim

FAST = runledger.RetryPolicy(base=0.0, jitter=0.0)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics`` by (name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_outcomes_time_handlers_and_read_the_queue_depth(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()

    @registry.handler("metrics.ok")
    def ok(ctx: runledger.JobContext, payload: Any) -> int:
        return 1

    @registry.handler("metrics.boom", max_attempts=2, retry=FAST)
    def boom(ctx: runledger.JobContext, payload: Any) -> None:
        raise ValueError("no")

    ok_id = runledger.enqueue(autocommit_conn, "metrics.ok")
    boom_id = runledger.enqueue(autocommit_conn, "metrics.boom")
    runledger.enqueue(autocommit_conn, "metrics.ok", queue="elsewhere")  # nobody consumes it
    rt = runtime(registry, metrics_port=0)
    assert rt.metrics is not None and rt.metrics.port
    port = rt.metrics.port
    wait_for_job(ok_id, "succeeded")
    wait_for_job(boom_id, "failed")

    def failed_counted() -> bool:
        samples = scrape(port)
        return value(samples, "runledger_jobs_total", queue="default",
                     job_type="metrics.boom", outcome="failed") == 1.0  # fmt: skip

    wait_until(failed_counted, what="the dead letter counted")
    samples = scrape(port)
    jobs = "runledger_jobs_total"
    assert value(samples, jobs, queue="default", job_type="metrics.ok", outcome="succeeded") == 1
    assert value(samples, jobs, queue="default", job_type="metrics.boom", outcome="retrying") == 1
    duration = "runledger_job_duration_seconds_count"
    assert value(samples, duration, queue="default", job_type="metrics.ok") == 1
    assert value(samples, duration, queue="default", job_type="metrics.boom") == 2
    inf_bucket = value(
        samples, "runledger_job_duration_seconds_bucket",
        queue="default", job_type="metrics.ok", le="+Inf",
    )  # fmt: skip
    assert inf_bucket == 1
    assert value(samples, "runledger_queue_jobs", queue="elsewhere", status="queued") == 1
    oldest = value(samples, "runledger_queue_oldest_due_seconds", queue="elsewhere")
    assert oldest is not None and oldest >= 0
    assert value(samples, "runledger_jobs_running") == 0
    assert value(samples, "runledger_jobs_prefetched") == 0

    rt.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_the_running_and_prefetched_gauges_are_read_from_the_in_flight_table(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()
    release = threading.Event()

    @registry.handler("metrics.wait")
    def wait(ctx: runledger.JobContext, payload: Any) -> None:
        release.wait(10)

    runledger.enqueue(autocommit_conn, "metrics.wait")
    runledger.enqueue(autocommit_conn, "metrics.wait")
    rt = runtime(registry, concurrency=1, prefetch=1, metrics_port=0)
    assert rt.metrics is not None and rt.metrics.port
    port = rt.metrics.port
    try:
        wait_until(
            lambda: (
                value(scrape(port), "runledger_jobs_running") == 1
                and value(scrape(port), "runledger_jobs_prefetched") == 1
            ),
            what="one job running and one waiting in prefetch",
        )
    finally:
        release.set()
    wait_until(
        lambda: value(scrape(port), "runledger_jobs_total", queue="default",
                      job_type="metrics.wait", outcome="succeeded") == 2,
        what="both jobs counted",
    )  # fmt: skip
    samples = scrape(port)
    assert value(samples, "runledger_jobs_running") == 0
    assert value(samples, "runledger_jobs_prefetched") == 0


def test_an_expired_lease_reaped_here_is_counted_as_lost(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()

    @registry.handler("metrics.reaped", retry=FAST)
    def reaped(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    job_id = runledger.enqueue(autocommit_conn, "metrics.reaped")
    fake_claim(autocommit_conn, "metrics.reaped", lease_seconds=1)  # a worker that vanished
    rt = runtime(registry, metrics_port=0)
    assert rt.metrics is not None and rt.metrics.port
    port = rt.metrics.port
    wait_for_job(job_id, "succeeded")
    wait_until(
        lambda: value(scrape(port), "runledger_jobs_total", queue="default",
                      job_type="metrics.reaped", outcome="succeeded") == 1,
        what="the retry's success counted",
    )  # fmt: skip
    samples = scrape(port)
    labels = {"queue": "default", "job_type": "metrics.reaped"}
    assert value(samples, "runledger_leases_expired_total", **labels) == 1
    assert value(samples, "runledger_lost_leases_total", **labels) is None  # not this worker's
    assert value(samples, "runledger_jobs_total", outcome="retrying", **labels) == 1


def test_a_bad_or_taken_port_and_a_missing_extra_are_refused_before_anything_starts(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = runledger.Registry()
    with pytest.raises(ConfigError) as bad:
        runledger.Runtime(dsn, registry, metrics_port=70000)
    assert bad.value.name == "metrics_port"

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        rt = runledger.Runtime(dsn, registry, metrics_port=taken.getsockname()[1])
        with pytest.raises(ConfigError) as in_use:
            rt.start()
        assert in_use.value.name == "metrics_port"
        rt.stop()

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(MissingExtra) as missing:
        runledger.Runtime(dsn, registry, metrics_port=0)
    assert missing.value.extra == "metrics"
    assert "runledger-pg[metrics]" in str(missing.value)


def test_prometheus_client_is_not_imported_unless_metrics_are_asked_for() -> None:
    code = (
        "import sys, runledger, runledger.cli, runledger.runtime.runtime\n"
        "runledger.Runtime('host=unused', runledger.Registry())\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


APP = """
import runledger

registry = runledger.Registry()


@registry.handler("metrics.cli")
def hello(ctx, payload):
    return payload
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_runledger_worker_metrics_port_serves_metrics(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "metrics_app.py").write_text(APP)
    port = _free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    environ.pop("DATABASE_URL", None)
    with psycopg.connect(dsn, autocommit=True) as conn:
        runledger.enqueue(conn, "metrics.cli", {"n": 1})
        worker = subprocess.Popen(
            [sys.executable, "-m", "runledger.cli", "worker", "--dsn", dsn, "--no-listen",
             "--app", "metrics_app:registry", "--metrics-port", str(port)],
            cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                assert worker.poll() is None, worker.communicate()[1]
                assert time.monotonic() < deadline, "no success counted on /metrics in 30 s"
                try:
                    samples = scrape(port)
                except (urllib.error.URLError, ConnectionError):
                    samples = {}
                succeeded = value(samples, "runledger_jobs_total", queue="default",
                                  job_type="metrics.cli", outcome="succeeded")  # fmt: skip
                if succeeded == 1:
                    break
                time.sleep(0.05)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr


def test_queue_wait_is_observed_per_claim_and_database_errors_per_loop(
    dsn: str,
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_for_job: WaitForJob,
    wait_until: WaitUntil,
) -> None:
    registry = runledger.Registry()

    @registry.handler("metrics.wait")
    def wait(ctx: runledger.JobContext, payload: Any) -> int:
        return 1

    rt = runtime(registry, metrics_port=0, poll_interval=0.05)
    port = rt.metrics.port if rt.metrics is not None else None
    assert port is not None
    for job_id in [runledger.enqueue(autocommit_conn, "metrics.wait") for _ in range(3)]:
        wait_for_job(job_id, "succeeded")
    samples = scrape(port)
    labels = {"queue": "default", "job_type": "metrics.wait"}
    assert value(samples, "runledger_job_queue_wait_seconds_count", **labels) == 3
    waited = value(samples, "runledger_job_queue_wait_seconds_sum", **labels)
    assert waited is not None and waited >= 0

    # A claim held on a table lock, its backend terminated while it waits: one error.
    break_a_waiting_claim(dsn, autocommit_conn)

    wait_until(
        lambda: (value(scrape(port), "runledger_database_errors_total", loop="runledger-claimer-0")
                 or 0) >= 1,
        what="the claimer's database error to be counted",
    )  # fmt: skip


def test_the_pruner_exports_what_it_deleted_and_how_long_it_has_been_behind(
    runtime: RuntimeFactory,
    autocommit_conn: psycopg.Connection[Any],
    wait_until: WaitUntil,
) -> None:
    from tests.runtime.test_pruner import DAY, old_and_young

    old, _ = old_and_young(autocommit_conn)  # three cancelled ten days ago, one now
    # Succeeded jobs kept forever: the events go row by row with their jobs, and are counted.
    policy = runledger.Retention(succeeded=None, cancelled=DAY)
    rt = runtime(runledger.Registry(), metrics_port=0, retention=policy)
    assert rt.metrics is not None and rt.metrics.port and rt.pruner is not None
    port = rt.metrics.port

    def pruned_counted() -> bool:
        return value(scrape(port), "runledger_pruned_total", kind="jobs") == float(len(old))

    wait_until(pruned_counted, what="the pruned jobs counted")
    samples = scrape(port)
    assert value(samples, "runledger_pruned_total", kind="attempts") == 0.0  # never claimed
    assert value(samples, "runledger_pruned_total", kind="events") == rt.pruner.total.events > 0
    assert value(samples, "runledger_pruned_total", kind="workflow_runs") == 0.0
    assert value(samples, "runledger_pruner_behind_seconds") == 0.0


def test_the_behind_gauge_grows_while_rounds_end_with_jobs_due_and_drops_when_caught_up(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    from prometheus_client import generate_latest

    from runledger.runtime.inflight import InFlightTable
    from runledger.runtime.metrics import Metrics
    from runledger.runtime.pruner import Pruner
    from tests.runtime.test_pruner import DAY, RecordedStop, old_and_young

    old_and_young(autocommit_conn)
    with runledger.Store(dsn) as store:
        # Time for one transaction a round: every round runs out of it (as one with jobs
        # still due would), until the budget is raised.
        pruner = Pruner(store, runledger.Retention(cancelled=DAY), budget=1e-9, vacuum=False)
        metrics = Metrics(InFlightTable(), store, port=0)
        metrics.watch_pruner(pruner)

        def behind() -> float | None:
            text = generate_latest(metrics.registry).decode()
            return next(
                (s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "runledger_pruner_behind_seconds"), None,
            )  # fmt: skip

        assert behind() == 0.0
        stop = RecordedStop()
        pruner.step(stop)
        first = behind()
        pruner.step(stop)
        second = behind()
        assert first is not None and second is not None and second > first >= 0.0
        pruner.budget = 10.0
        pruner.step(stop)  # nothing left due
        assert not pruner.behind
        assert behind() == 0.0


def test_a_runtime_without_retention_exports_no_pruner_series(
    runtime: RuntimeFactory,
) -> None:
    rt = runtime(runledger.Registry(), metrics_port=0, retention=None)
    assert rt.metrics is not None and rt.metrics.port
    names = {name for name, _ in scrape(rt.metrics.port)}
    assert "runledger_jobs_running" in names
    assert not {n for n in names if "prune" in n}
