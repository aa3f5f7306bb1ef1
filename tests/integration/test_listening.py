"""``listening``: the short-lived LISTEN connection ``wait_for_run`` waits on."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from runledger.postgres import channels
from runledger.postgres.listener import listening


def test_listening_subscribes_an_unprepared_autocommit_connection_to_every_channel(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    with listening(dsn, [channels.RUNS, channels.CANCEL]) as conn:
        # Unprepared, so that it works through PgBouncer in transaction mode before 1.21.
        assert conn.autocommit
        assert conn.prepare_threshold is None
        autocommit_conn.execute("select pg_notify(%s, 'a run')", [channels.RUNS])
        autocommit_conn.execute("select pg_notify(%s, 'a job')", [channels.CANCEL])
        autocommit_conn.execute("select pg_notify(%s, 'not heard')", [channels.JOBS])
        autocommit_conn.execute("select pg_notify(%s, 'the end')", [channels.RUNS])
        heard: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while (channels.RUNS, "the end") not in heard and time.monotonic() < deadline:
            heard.extend((n.channel, n.payload) for n in conn.notifies(timeout=0.5))

    assert heard == [
        (channels.RUNS, "a run"),
        (channels.CANCEL, "a job"),
        (channels.RUNS, "the end"),
    ]
    assert conn.closed
