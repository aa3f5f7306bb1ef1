"""The enqueue helpers on a SQLAlchemy session apply runledger's limits and pass the payload
limit through; a refusal leaves the session's transaction usable."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import orm, text

import runledger
from runledger.contrib import flask as rl
from runledger.errors import PayloadTooLarge, TextTooLong

BIG = {"s": "x" * 200}


def test_limits_apply_and_the_payload_limit_passes_through(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    workflow = runledger.WorkflowBuilder("w").step("a", job="t", payload=BIG).build()
    engine = sqlalchemy.create_engine(rl.sqlalchemy_url(dsn))
    try:
        with orm.Session(engine) as session:
            kept = rl.enqueue(session, "t", {"kept": True})
            with pytest.raises(TextTooLong):
                rl.enqueue(session, "t" * 10_000)
            with pytest.raises(PayloadTooLarge):
                rl.enqueue(session, "t", BIG, max_payload_bytes=100)
            with pytest.raises(PayloadTooLarge):
                rl.enqueue_many(session, [runledger.Job("t", BIG)], max_payload_bytes=100)
            with pytest.raises(PayloadTooLarge):
                rl.enqueue_workflow(session, workflow, max_payload_bytes=100)
            assert session.execute(text("select 1")).scalar_one() == 1
            session.commit()
    finally:
        engine.dispose()

    assert runledger.get_job(conn, kept).payload == {"kept": True}
    assert runledger.list_jobs(conn) == [runledger.get_job(conn, kept)]
