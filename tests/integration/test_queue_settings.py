"""Queue settings on the caller's connection: set_queue_limits, pause_queue, resume_queue.

What the claim does with them is tested in the claim's own tests; here, what is stored, the
events written, and the errors raised before anything is written.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

import runledger
from runledger import EventKind, QueueSettings
from runledger.core.limits import parse_queue_limits
from runledger.errors import BlankQueue, ConfigError, InvalidQueueLimit
from runledger.postgres.queues import apply_queue_limits

Conn = psycopg.Connection[Any]


def queue_events(observer: Conn, queue: str) -> list[tuple[EventKind, Any]]:
    return [(e.kind, e.data) for e in runledger.list_events(observer, queue=queue)]


def test_a_queue_without_settings_is_unlimited_and_running(conn: Conn) -> None:
    assert runledger.queue_settings(conn, "mail") == QueueSettings(queue="mail")
    assert runledger.list_queue_settings(conn) == []


def test_limits_are_stored_and_recorded_with_who_set_them(conn: Conn, observer: Conn) -> None:
    settings = runledger.set_queue_limits(conn, "mail", concurrency=10, rate=100, by="ops")
    assert (settings.concurrency, settings.rate, settings.per) == (10, 100, 1.0)
    assert settings.limited
    assert queue_events(observer, "mail") == []  # nothing visible before the commit
    conn.commit()
    assert runledger.queue_settings(observer, "mail") == settings
    assert queue_events(observer, "mail") == [
        (EventKind.QUEUE_LIMITED, {"concurrency": 10, "rate": 100, "per": 1, "by": "ops"})
    ]


def test_a_limit_not_passed_is_kept_and_none_removes_one(conn: Conn) -> None:
    runledger.set_queue_limits(conn, "mail", concurrency=10, rate=100, per=60)
    kept = runledger.set_queue_limits(conn, "mail", concurrency=5)
    assert (kept.concurrency, kept.rate, kept.per) == (5, 100, 60.0)
    removed = runledger.set_queue_limits(conn, "mail", rate=None)
    assert (removed.concurrency, removed.rate, removed.per) == (5, None, None)
    assert not runledger.set_queue_limits(conn, "mail", concurrency=None).limited


def test_the_by_default_is_the_database_role(conn: Conn) -> None:
    runledger.set_queue_limits(conn, "mail", concurrency=1)
    paused = runledger.pause_queue(conn, "mail")
    (role,) = conn.execute("select session_user::text").fetchone() or ("",)
    assert paused.paused_by == role
    bys = [e.data.get("by") for e in runledger.list_events(conn, queue="mail")]  # type: ignore[union-attr]
    assert bys == [role, role]


def test_pause_and_resume_record_who_when_and_why_once(conn: Conn) -> None:
    paused = runledger.pause_queue(conn, "mail", by="alice", reason="vendor outage")
    assert paused.paused and paused.paused_by == "alice" and paused.paused_at is not None
    # Pausing again changes nothing and writes no event.
    assert runledger.pause_queue(conn, "mail", by="bob") == paused
    resumed = runledger.resume_queue(conn, "mail", by="carol")
    assert not resumed.paused and resumed.paused_at is None and resumed.paused_by is None
    assert runledger.resume_queue(conn, "mail") == resumed
    events = runledger.list_events(conn, queue="mail")
    assert [e.kind for e in events] == [EventKind.QUEUE_PAUSED, EventKind.QUEUE_RESUMED]
    assert events[0].data == {"by": "alice", "reason": "vendor outage"}
    assert events[0].job_id is None and events[0].workflow_run_id is None
    assert events[1].data["by"] == "carol"  # type: ignore[index,call-overload]
    assert events[1].data["paused_seconds"] >= 0  # type: ignore[index,call-overload,operator]


def test_list_queue_settings_is_by_name(conn: Conn) -> None:
    runledger.pause_queue(conn, "zeta")
    runledger.set_queue_limits(conn, "alpha", rate=5, per=0.5)
    assert [s.queue for s in runledger.list_queue_settings(conn)] == ["alpha", "zeta"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 2**31}, "concurrency"),
        ({"rate": -1}, "rate"),
        ({"rate": 1.5}, "rate"),
        ({"rate": 10, "per": 0}, "per"),
        ({"rate": 10, "per": float("nan")}, "per"),
        ({"rate": 10, "per": "1s"}, "per"),
    ],
)
def test_invalid_limits_raise_before_anything_is_written(
    conn: Conn, options: dict[str, Any], field: str
) -> None:
    conn.execute("select 1")  # inside the caller's transaction
    with pytest.raises(InvalidQueueLimit) as raised:
        runledger.set_queue_limits(conn, "mail", **options)
    assert (raised.value.queue, raised.value.field) == ("mail", field)
    assert runledger.list_queue_settings(conn) == []  # the transaction is still usable


@pytest.mark.parametrize("call", ["limit", "pause", "resume", "read"])
def test_a_blank_queue_name_is_refused(conn: Conn, call: str) -> None:
    functions = {
        "limit": lambda: runledger.set_queue_limits(conn, " ", concurrency=1),
        "pause": lambda: runledger.pause_queue(conn, ""),
        "resume": lambda: runledger.resume_queue(conn, ""),
        "read": lambda: runledger.queue_settings(conn, ""),
    }
    with pytest.raises(BlankQueue):
        functions[call]()


def test_two_changes_of_one_queue_serialise_and_each_event_records_what_it_left(
    conn: Conn, observer: Conn, dsn: str
) -> None:
    runledger.set_queue_limits(conn, "mail", concurrency=3)  # holds the row until commit
    done = threading.Event()
    result: list[QueueSettings] = []

    def other() -> None:
        with psycopg.connect(dsn) as second:
            result.append(runledger.set_queue_limits(second, "mail", rate=7))
            second.commit()
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    wait_for_lock_wait(observer)  # the second change waits for the first's row lock
    assert not done.is_set()
    conn.commit()
    thread.join(10)
    # The second change kept the first one's concurrency: it read the row after the commit.
    assert (result[0].concurrency, result[0].rate) == (3, 7)
    (role,) = observer.execute("select session_user::text").fetchone() or ("",)
    data = [e.data for e in runledger.list_events(observer, queue="mail")]
    assert data == [
        {"concurrency": 3, "rate": None, "per": None, "by": role},
        {"concurrency": 3, "rate": 7, "per": 1, "by": role},
    ]


def wait_for_lock_wait(observer: Conn) -> None:
    """Poll until some session of this database waits for a lock."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        waiting = observer.execute(
            "select count(*) from pg_stat_activity "
            "where datname = current_database() and wait_event_type = 'Lock'"
        ).fetchone()
        if waiting and waiting[0]:
            return
        time.sleep(0.005)
    pytest.fail("the second change never waited for the first one's lock")


def test_apply_queue_limits_writes_only_what_differs_and_leaves_pauses(conn: Conn) -> None:
    runledger.pause_queue(conn, "mail", by="alice")
    runledger.set_queue_limits(conn, "other", concurrency=4)
    stated = parse_queue_limits(
        {"mail": {"concurrency": 5}, "other": {"concurrency": 4}}, name="SETTING"
    )

    changed = apply_queue_limits(conn, stated, by="deploy")

    assert [s.queue for s in changed] == ["mail"]
    mail = runledger.queue_settings(conn, "mail")
    assert (mail.concurrency, mail.paused, mail.paused_by) == (5, True, "alice")
    assert apply_queue_limits(conn, stated, by="deploy") == []
    kinds = [e.kind for e in runledger.list_events(conn, queue="mail")]
    assert kinds == [EventKind.QUEUE_PAUSED, EventKind.QUEUE_LIMITED]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (["mail"], ConfigError),
        ({"mail": 5}, ConfigError),
        ({"mail": {"concurency": 5}}, ConfigError),
        ({"mail": {"rate": 0}}, InvalidQueueLimit),
        ({"": {"rate": 1}}, BlankQueue),
    ],
)
def test_a_queue_limits_setting_that_does_not_parse_names_itself(
    value: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_queue_limits(value, name="SETTING")
