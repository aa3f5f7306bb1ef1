"""throughput.py's flow-control workload (``--parts limited``) and its pgbench claim: keyed
jobs round-robin over the keys, a clear refusal where ``Job`` takes no key, the limit checks
run against the schema, and the claim statement carries every parameter of the runtime's."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import throughput
from throughput import (
    KeyedJobsUnsupported,
    LimitSampler,
    Throughput,
    Workload,
    check_limits,
    claim_statement,
    print_limited,
)

import runledger
from runledger.postgres.attempts import claim


def _takes_keys() -> bool:
    try:
        runledger.Job("x", concurrency_key="k")  # type: ignore[call-arg]
    except TypeError:
        return False
    return True


@pytest.mark.skipif(not _takes_keys(), reason="runledger.Job takes no concurrency_key yet")
def test_keyed_jobs_go_round_robin_over_the_keys() -> None:
    jobs = Workload(keys=500).jobs(498, 4)

    assert [job.concurrency_key for job in jobs] == ["k498", "k499", "k0", "k1"]  # type: ignore[attr-defined]
    assert {job.queue for job in jobs} == {throughput.QUEUE}


def test_the_keyed_workload_refuses_clearly_when_job_takes_no_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def job(job_type: str, *, queue: str | None = None) -> object:
        return (job_type, queue)

    monkeypatch.setattr(throughput.runledger, "Job", job)

    with pytest.raises(KeyedJobsUnsupported, match="takes no concurrency_key"):
        Workload(keys=500).jobs(0, 1)
    Workload(queue_concurrency=8).check()  # a queue limit needs no key
    assert Workload().jobs(0, 2) == [(throughput.JOB_TYPE, throughput.QUEUE)] * 2


def test_the_workloads_are_named_in_the_figures() -> None:
    assert Workload().label == ""
    assert Workload(keys=500).label == "500 keys x limit 1"
    assert Workload(queue_concurrency=8).label == "queue limit 8"


def test_the_limit_sampler_counts_running_jobs_per_queue_and_per_key(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    runledger.enqueue_many(
        autocommit_conn, [runledger.Job(throughput.JOB_TYPE, queue=throughput.QUEUE)] * 3
    )
    # Three running jobs, two of them under one key.
    with autocommit_conn.transaction():
        claimed = claim(
            autocommit_conn, worker="t", queues=[throughput.QUEUE],
            job_types=[throughput.JOB_TYPE], limit=3, lease_seconds=60,
        )  # fmt: skip
    autocommit_conn.execute(
        "update runledger.jobs set concurrency_key = %s, concurrency_limit = 1 where id = %s",
        ("b", claimed[0].id),
    )
    autocommit_conn.execute(
        "update runledger.jobs set concurrency_key = 'a', concurrency_limit = 1 where id = any(%s)",
        ([job.id for job in claimed[1:]],),
    )
    sampler = LimitSampler(dsn, interval=0.01)
    sampler.start()
    deadline = time.monotonic() + 10
    while not sampler.seen() and time.monotonic() < deadline:
        time.sleep(0.01)

    held = sampler.stop()

    assert (held.queue, held.key) == (3, 2)
    assert check_limits(Workload(keys=500), held).startswith("KEY LIMIT BROKEN: at most 2 ")
    assert check_limits(Workload(queue_concurrency=3), held).startswith("at most 3 running")
    assert check_limits(Workload(), held) == ""


def test_the_pgbench_claim_has_every_parameter_and_runs(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    runledger.enqueue_many(
        autocommit_conn, [runledger.Job(throughput.JOB_TYPE, queue=throughput.QUEUE)] * 3
    )

    text = claim_statement(autocommit_conn, 2)

    assert "%(" not in text
    statement = text.replace("\\gset\n", "")
    with autocommit_conn.transaction(force_rollback=True):
        ids, tokens = autocommit_conn.execute(statement).fetchall()[0]
    assert len(ids) == len(tokens) == 2


def test_the_flow_control_table_sets_each_figure_beside_the_unlimited_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = throughput.LIMITED_SETUP.name
    baseline = Throughput(name=name, windows=(1000.0, 1000.0), seconds=2.0, jobs=2000)
    keyed = Throughput(
        name=f"{name} 500 keys x limit 1", windows=(500.0, 500.0), seconds=2.0, jobs=1000,
        note="no key ran twice at once",
    )  # fmt: skip

    print_limited([(baseline, None), (keyed, baseline)])

    rows = capsys.readouterr().out.splitlines()
    assert rows[-2].split()[:3] == ["unlimited", "1,000", "1.00"]
    assert rows[-1].split()[:8] == ["500", "keys", "x", "limit", "1", "500", "0.50", "1.00"]
    assert rows[-1].endswith("no key ran twice at once")
