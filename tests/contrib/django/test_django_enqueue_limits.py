"""The enqueue helpers on Django's connection apply runledger's limits and pass the payload
limit through; a refusal leaves the atomic block usable."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import runledger
from runledger.contrib import django as rl
from runledger.errors import PayloadTooLarge, TextTooLong

BIG = {"s": "x" * 200}


def count_jobs(observer: psycopg.Connection[Any]) -> int:
    row = observer.execute("select count(*) from runledger.jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_limits_apply_and_the_payload_limit_passes_through(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import connection, transaction

    workflow = runledger.WorkflowBuilder("w").step("a", job="rltest.echo", payload=BIG).build()
    with transaction.atomic():
        kept = rl.enqueue("rltest.echo", {"kept": True})
        with pytest.raises(TextTooLong):
            rl.enqueue("rltest.echo", queue="q" * 10_000)
        with pytest.raises(PayloadTooLarge):
            rl.enqueue("rltest.echo", BIG, max_payload_bytes=100)
        with pytest.raises(PayloadTooLarge):
            rl.enqueue_many([runledger.Job("rltest.echo", BIG)], max_payload_bytes=100)
        with pytest.raises(PayloadTooLarge):
            rl.enqueue_workflow(workflow, max_payload_bytes=100)
        with connection.cursor() as cur:  # the block still takes statements
            cur.execute("select 1")

    assert count_jobs(observer) == 1
    assert runledger.get_job(observer, kept).payload == {"kept": True}
