"""Cron schedules against real Postgres: sync on start, firing, no double fire, coalescing,
runtime management (upsert, pause, resume, delete, list) and typed errors at definition."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import runledger
from runledger.core.schedule import ScheduleSpec, next_tick
from runledger.errors import InvalidCron, ScheduleNotFound, UnknownTimezone
from runledger.postgres.schedules import (
    Fired,
    Unfireable,
    delete_schedule,
    fire_due,
    list_schedules,
    pause_schedule,
    resume_schedule,
    sync_schedules,
    upsert_schedule,
)

YEARLY = "0 0 1 1 *"  # due only when a test says so: the next tick is months away


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.02)


def db_now(conn: psycopg.Connection[Any]) -> datetime.datetime:
    row = conn.execute("select now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def make_due(conn: psycopg.Connection[Any], name: str, ago: str = "1 second") -> None:
    """Put the schedule's next tick in the past (autocommit ``conn``)."""
    updated = conn.execute(
        "update runledger.schedules set next_run_at = now() - %s::interval where name = %s",
        (ago, name),
    )
    assert updated.rowcount == 1


def schedule_jobs(conn: psycopg.Connection[Any], name: str) -> list[tuple[Any, ...]]:
    """(id, scheduled_at, job_type, payload, status, created_at) of the schedule's jobs."""
    return conn.execute(
        "select id, scheduled_at, job_type, payload, status, created_at from runledger.jobs "
        "where schedule_name = %s order by scheduled_at",
        (name,),
    ).fetchall()


def schedule_row(conn: psycopg.Connection[Any], name: str) -> runledger.ScheduleRecord:
    found = [s for s in list_schedules(conn) if s.name == name]
    assert len(found) == 1, found
    return found[0]


# --- sync and firing in a Runtime ------------------------------------------------------------


def test_registry_schedule_is_synced_on_runtime_start_with_next_run_at_in_the_future(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    registry = runledger.Registry()
    registry.handler("tick")(lambda ctx, payload: None)
    registry.schedule("every-minute", cron="* * * * *", job_type="tick", payload={"n": 1})
    assert list_schedules(autocommit_conn) == []

    before = db_now(autocommit_conn)
    # scheduler=False: start() syncs all the same, and nothing fires the tick under our feet
    # should a minute boundary pass while the test reads it.
    with runledger.Runtime(dsn, registry, concurrency=1, listen=False, scheduler=False):
        row = schedule_row(autocommit_conn, "every-minute")
        after = db_now(autocommit_conn)

    assert (row.cron, row.timezone, row.job_type, row.payload) == (
        "* * * * *",
        "UTC",
        "tick",
        {"n": 1},
    )
    assert row.queue == "default"
    assert row.enabled is True
    # The first tick after the moment of the sync, which lies between before and after.
    assert row.next_run_at > before
    assert row.next_run_at in {next_tick("* * * * *", "UTC", t) for t in (before, after)}
    assert row.last_run_at is None


def test_due_tick_fired_by_the_runtime_scheduler_becomes_one_job_that_runs(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ran = threading.Event()
    seen: list[uuid.UUID] = []
    registry = runledger.Registry()

    @registry.handler("tick")
    def tick(ctx: runledger.JobContext, payload: Any) -> Any:
        seen.append(ctx.job_id)
        ran.set()
        return {"got": payload}

    registry.schedule("every-minute", cron="* * * * *", job_type="tick", payload={"n": 1})

    with runledger.Runtime(
        dsn, registry, concurrency=1, listen=False, poll_interval=0.1, schedule_interval=0.1
    ):
        make_due(autocommit_conn, "every-minute")
        assert ran.wait(15), "the scheduled job never ran"
        job_id = seen[0]
        wait_until(
            lambda: runledger.get_job(autocommit_conn, job_id).status == "succeeded",
            what="the scheduled job to succeed",
        )

    row = autocommit_conn.execute(
        "select schedule_name, scheduled_at, created_at, payload from runledger.jobs where id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    name, scheduled_at, created_at, payload = row
    assert name == "every-minute"
    assert scheduled_at is not None
    # The tick is the whole minute the job was created in (the latest tick at firing time).
    assert scheduled_at == created_at.replace(second=0, microsecond=0)
    assert payload == {"n": 1}
    same_tick = autocommit_conn.execute(
        "select count(*) from runledger.jobs where schedule_name = %s and scheduled_at = %s",
        ("every-minute", scheduled_at),
    ).fetchone()
    assert same_tick == (1,)
    assert runledger.get_job(autocommit_conn, job_id).output == {"got": {"n": 1}}
    assert schedule_row(autocommit_conn, "every-minute").last_job_id is not None


def test_handler_of_a_scheduled_job_sees_its_tick_in_ctx_scheduled_at(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    ran = threading.Event()
    seen: list[tuple[uuid.UUID, datetime.datetime | None]] = []
    registry = runledger.Registry()

    @registry.handler("tick")
    def tick(ctx: runledger.JobContext, payload: Any) -> None:
        seen.append((ctx.job_id, ctx.scheduled_at))
        ran.set()

    registry.schedule("yearly", cron=YEARLY, job_type="tick")

    with runledger.Runtime(
        dsn, registry, concurrency=1, listen=False, poll_interval=0.1, schedule_interval=0.1
    ):
        make_due(autocommit_conn, "yearly")
        assert ran.wait(15), "the scheduled job never ran"

    job_id, seen_tick = seen[0]
    row = autocommit_conn.execute(
        "select scheduled_at from runledger.jobs where id = %s", (job_id,)
    ).fetchone()
    assert row is not None
    assert seen_tick == row[0]


def test_three_runtimes_on_one_database_fire_a_due_tick_once(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    def build() -> runledger.Runtime:
        registry = runledger.Registry()
        registry.handler("tick")(lambda ctx, payload: None)
        registry.schedule("yearly", cron=YEARLY, job_type="tick", payload={"from": "cron"})
        return runledger.Runtime(
            dsn,
            registry,
            concurrency=1,
            listen=False,
            poll_interval=0.1,
            schedule_interval=0.01,
            reaper=False,
        )

    runtimes = [build() for _ in range(3)]
    try:
        for rt in runtimes:
            rt.start()
        make_due(autocommit_conn, "yearly")
        wait_until(lambda: schedule_jobs(autocommit_conn, "yearly"), what="a job of the tick")
        # Give all three schedulers many more rounds at the same tick before stopping them.
        rounds_after = time.monotonic() + 0.5
        wait_until(lambda: time.monotonic() > rounds_after, what="more scheduler rounds")
    finally:
        stoppers = [threading.Thread(target=rt.stop) for rt in runtimes]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(30)

    jobs = schedule_jobs(autocommit_conn, "yearly")
    assert len(jobs) == 1, jobs
    now = db_now(autocommit_conn)
    assert jobs[0][1] == datetime.datetime(now.year, 1, 1, tzinfo=datetime.UTC)
    assert schedule_row(autocommit_conn, "yearly").next_run_at > now
    enqueued = autocommit_conn.execute(
        "select count(*) from runledger.events where kind = 'job.enqueued' and job_id = %s",
        (jobs[0][0],),
    ).fetchone()
    assert enqueued == (1,)


# --- fire_due under concurrency --------------------------------------------------------------


def test_threads_firing_inside_open_transactions_fire_a_due_tick_exactly_once(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="yearly", cron=YEARLY, job_type="tick"))
    make_due(autocommit_conn, "yearly")
    threads_n = 8
    before, after = (
        threading.Barrier(threads_n, timeout=20),
        threading.Barrier(threads_n, timeout=20),
    )
    results: list[list[Fired]] = []
    errors: list[BaseException] = []

    def fire() -> None:
        try:
            with psycopg.connect(dsn) as conn:
                conn.execute("select 1")  # open the transaction before anyone fires
                before.wait()
                fired = fire_due(conn)
                # Every thread fires while the winner's transaction is still open: the
                # losers must skip the locked row rather than wait for it.
                after.wait()
                conn.commit()
                results.append(fired)
        except BaseException as err:
            errors.append(err)
            before.abort()
            after.abort()

    threads = [threading.Thread(target=fire) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert errors == []
    assert sorted(len(r) for r in results) == [0] * (threads_n - 1) + [1]
    assert len(schedule_jobs(autocommit_conn, "yearly")) == 1


def test_threads_firing_in_short_transactions_fire_each_due_tick_exactly_once(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    names = [f"yearly-{n}" for n in range(5)]
    for name in names:
        upsert_schedule(autocommit_conn, ScheduleSpec(name=name, cron=YEARLY, job_type="tick"))
    threads_n = 8
    results: list[list[Fired]] = []
    errors: list[BaseException] = []

    for _ in range(3):  # three rounds of the same race
        autocommit_conn.execute(
            "update runledger.schedules set next_run_at = now() - interval '1 second'"
        )
        autocommit_conn.execute("delete from runledger.jobs")
        start = threading.Barrier(threads_n, timeout=20)
        results.clear()

        def fire(start: threading.Barrier = start) -> None:
            try:
                with psycopg.connect(dsn) as conn:
                    start.wait()
                    for _ in range(5):
                        with conn.transaction():
                            results.append(fire_due(conn))
            except BaseException as err:
                errors.append(err)
                start.abort()

        threads = [threading.Thread(target=fire) for _ in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        assert errors == []
        fired_names = sorted(f.name for r in results for f in r)
        assert fired_names == names
        for name in names:
            assert len(schedule_jobs(autocommit_conn, name)) == 1, name


def test_missed_ticks_coalesce_into_one_job_at_the_latest_tick(
    conn: psycopg.Connection[Any], autocommit_conn: psycopg.Connection[Any]
) -> None:
    upsert_schedule(
        autocommit_conn, ScheduleSpec(name="every-minute", cron="* * * * *", job_type="tick")
    )
    make_due(autocommit_conn, "every-minute", ago="1 hour")  # 60 ticks missed

    now = db_now(conn)  # fire_due runs in this transaction, so it sees this now()
    fired = fire_due(conn)
    conn.commit()

    current_minute = now.replace(second=0, microsecond=0)
    assert [(f.name, f.tick) for f in fired] == [("every-minute", current_minute)]
    jobs = schedule_jobs(autocommit_conn, "every-minute")
    assert [(j[0], j[1]) for j in jobs] == [(fired[0].job_id, current_minute)]
    row = schedule_row(autocommit_conn, "every-minute")
    assert row.next_run_at == current_minute + datetime.timedelta(minutes=1)
    assert row.next_run_at > now
    assert row.last_run_at == current_minute
    assert row.last_job_id == fired[0].job_id


def test_schedule_that_is_not_due_does_not_fire(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="yearly", cron=YEARLY, job_type="tick"))

    assert fire_due(autocommit_conn) == []
    assert schedule_jobs(autocommit_conn, "yearly") == []


def test_fired_job_carries_the_schedule_job_options(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    spec = ScheduleSpec(
        name="report",
        cron=YEARLY,
        job_type="report.build",
        payload={"kind": "annual"},
        queue="reports",
        priority=7,
        max_attempts=2,
        timeout_seconds=30,
    )
    upsert_schedule(autocommit_conn, spec)
    make_due(autocommit_conn, "report")

    [fired] = fire_due(autocommit_conn)

    job = runledger.get_job(autocommit_conn, fired.job_id)
    assert (job.job_type, job.payload, job.queue, job.priority) == (
        "report.build",
        {"kind": "annual"},
        "reports",
        7,
    )
    assert (job.max_attempts, job.timeout_seconds, job.status) == (2, 30, "queued")
    assert fired.job_type == "report.build"


# --- managing schedules ----------------------------------------------------------------------


def test_list_schedules_returns_every_schedule_by_name(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    for name in ("b", "a", "c"):
        upsert_schedule(
            autocommit_conn, ScheduleSpec(name=name, cron="*/5 * * * *", job_type="tick")
        )

    assert [s.name for s in list_schedules(autocommit_conn)] == ["a", "b", "c"]


def test_paused_schedule_does_not_fire_even_when_due(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="p", cron="* * * * *", job_type="tick"))
    pause_schedule(autocommit_conn, "p")
    make_due(autocommit_conn, "p", ago="10 minutes")

    assert fire_due(autocommit_conn) == []
    assert schedule_jobs(autocommit_conn, "p") == []
    assert schedule_row(autocommit_conn, "p").enabled is False


def test_resumed_schedule_skips_the_missed_ticks_and_fires_from_the_next_one(
    conn: psycopg.Connection[Any], autocommit_conn: psycopg.Connection[Any]
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="p", cron="* * * * *", job_type="tick"))
    pause_schedule(autocommit_conn, "p")
    make_due(autocommit_conn, "p", ago="10 minutes")

    now = db_now(conn)
    resume_schedule(conn, "p")
    conn.commit()

    row = schedule_row(autocommit_conn, "p")
    assert row.enabled is True
    assert row.next_run_at == next_tick("* * * * *", "UTC", now)
    assert row.next_run_at > now  # the ticks missed while paused are skipped
    make_due(autocommit_conn, "p")
    assert [f.name for f in fire_due(autocommit_conn)] == ["p"]


def test_resuming_an_enabled_schedule_keeps_its_next_tick(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="p", cron="* * * * *", job_type="tick"))
    make_due(autocommit_conn, "p", ago="10 minutes")
    due = schedule_row(autocommit_conn, "p").next_run_at

    resume_schedule(autocommit_conn, "p")

    assert schedule_row(autocommit_conn, "p").next_run_at == due


def test_deleted_schedule_is_gone_and_its_jobs_stay(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="d", cron=YEARLY, job_type="tick"))
    make_due(autocommit_conn, "d")
    [fired] = fire_due(autocommit_conn)

    delete_schedule(autocommit_conn, "d")

    assert list_schedules(autocommit_conn) == []
    assert runledger.get_job(autocommit_conn, fired.job_id).status == "queued"


@pytest.mark.parametrize("operation", [delete_schedule, pause_schedule, resume_schedule])
def test_unknown_schedule_name_raises_schedule_not_found(
    autocommit_conn: psycopg.Connection[Any],
    operation: Callable[[psycopg.Connection[Any], str], None],
) -> None:
    with pytest.raises(ScheduleNotFound) as caught:
        operation(autocommit_conn, "no-such-schedule")

    assert caught.value.name == "no-such-schedule"
    assert isinstance(caught.value, LookupError)


def test_upsert_changing_only_the_payload_keeps_next_run_at(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    spec = ScheduleSpec(name="s", cron="*/5 * * * *", job_type="tick", payload={"v": 1})
    upsert_schedule(autocommit_conn, spec)
    pinned = datetime.datetime(2031, 5, 5, 5, 5, tzinfo=datetime.UTC)
    autocommit_conn.execute("update runledger.schedules set next_run_at = %s", (pinned,))

    upsert_schedule(
        autocommit_conn,
        ScheduleSpec(name="s", cron="*/5 * * * *", job_type="tick", payload={"v": 2}),
    )

    row = schedule_row(autocommit_conn, "s")
    assert row.payload == {"v": 2}
    assert row.next_run_at == pinned


@pytest.mark.parametrize(
    "changed",
    [
        {"cron": "*/7 * * * *", "timezone": "UTC"},
        {"cron": "*/5 * * * *", "timezone": "Asia/Kolkata"},
    ],
    ids=["cron", "timezone"],
)
def test_upsert_changing_the_timing_moves_next_run_at(
    conn: psycopg.Connection[Any],
    autocommit_conn: psycopg.Connection[Any],
    changed: dict[str, str],
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="s", cron="*/5 * * * *", job_type="tick"))
    pinned = datetime.datetime(2031, 5, 5, 5, 5, tzinfo=datetime.UTC)
    autocommit_conn.execute("update runledger.schedules set next_run_at = %s", (pinned,))

    now = db_now(conn)
    upsert_schedule(conn, ScheduleSpec(name="s", job_type="tick", **changed))
    conn.commit()

    row = schedule_row(autocommit_conn, "s")
    assert (row.cron, row.timezone) == (changed["cron"], changed["timezone"])
    assert row.next_run_at == next_tick(changed["cron"], changed["timezone"], now)


def test_upsert_of_an_identical_schedule_writes_nothing(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    spec = ScheduleSpec(name="s", cron="*/5 * * * *", job_type="tick", payload={"v": 1})
    upsert_schedule(autocommit_conn, spec)
    first = autocommit_conn.execute("select xmin::text, updated_at from runledger.schedules")

    upsert_schedule(autocommit_conn, spec)

    again = autocommit_conn.execute("select xmin::text, updated_at from runledger.schedules")
    assert again.fetchall() == first.fetchall()


def test_paused_schedule_stays_paused_when_a_runtime_syncs_it_again(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    registry = runledger.Registry()
    registry.handler("tick")(lambda ctx, payload: None)
    registry.schedule("p", cron="* * * * *", job_type="tick")
    with runledger.Runtime(dsn, registry, concurrency=1, listen=False, scheduler=False):
        pass
    pause_schedule(autocommit_conn, "p")

    with runledger.Runtime(dsn, registry, concurrency=1, listen=False, scheduler=False):
        row = schedule_row(autocommit_conn, "p")

    assert row.enabled is False


# --- schedules removed from the code -----------------------------------------------------------


def registry_declaring(*names: str, job_type: str = "tick") -> runledger.Registry:
    registry = runledger.Registry()
    registry.handler(job_type)(lambda ctx, payload: None)
    for name in names:
        registry.schedule(name, cron=YEARLY, job_type=job_type)
    return registry


def start_and_stop(dsn: str, registry: runledger.Registry) -> None:
    """A runtime's start syncs the registry's schedules."""
    with runledger.Runtime(dsn, registry, concurrency=1, listen=False, scheduler=False):
        pass


def names_and_origins(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [(s.name, s.origin) for s in list_schedules(conn)]


def test_a_schedule_removed_from_the_registry_is_deleted_when_a_runtime_starts(
    dsn: str, autocommit_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    start_and_stop(dsn, registry_declaring("kept", "dropped"))
    make_due(autocommit_conn, "dropped")
    [fired] = fire_due(autocommit_conn)
    assert names_and_origins(autocommit_conn) == [("dropped", "registry"), ("kept", "registry")]

    with caplog.at_level("INFO", logger="runledger.scheduler"):
        start_and_stop(dsn, registry_declaring("kept"))

    assert names_and_origins(autocommit_conn) == [("kept", "registry")]
    # The job of its tick stays (the runtime may have run it meanwhile).
    assert [row[0] for row in schedule_jobs(autocommit_conn, "dropped")] == [fired.job_id]
    assert any("deleted schedule dropped" in r.getMessage() for r in caplog.records)


def test_a_registry_without_schedules_deletes_the_ones_it_declared_before(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    start_and_stop(dsn, registry_declaring("nightly"))

    start_and_stop(dsn, registry_declaring())

    assert list_schedules(autocommit_conn) == []


def test_a_sync_keeps_api_schedules_and_the_schedules_of_other_job_types(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    upsert_schedule(autocommit_conn, ScheduleSpec(name="manual", cron=YEARLY, job_type="tick"))
    # Another application sharing the schema declares a schedule for its own job type.
    start_and_stop(dsn, registry_declaring("billing", job_type="billing.run"))

    start_and_stop(dsn, registry_declaring())  # handles "tick", declares nothing

    assert names_and_origins(autocommit_conn) == [("billing", "registry"), ("manual", "api")]


def test_a_declared_schedule_taken_over_by_upsert_schedule_outlives_the_declaration(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    start_and_stop(dsn, registry_declaring("report"))
    upsert_schedule(autocommit_conn, ScheduleSpec(name="report", cron=YEARLY, job_type="tick"))
    assert names_and_origins(autocommit_conn) == [("report", "api")]

    start_and_stop(dsn, registry_declaring())

    assert names_and_origins(autocommit_conn) == [("report", "api")]


def test_a_sync_waits_for_another_sync_to_commit_and_then_applies_its_own_declarations(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    """An old release (declaring a and b) and a new one (declaring b only) start together:
    the syncs take turns, so they never lock the rows in opposite orders."""
    old = [ScheduleSpec(name=name, cron=YEARLY, job_type="tick") for name in ("a", "b")]
    new = old[1:]
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        assert sync_schedules(first, old, job_types=["tick"]) == []  # not committed yet
        done = threading.Event()
        removed: list[str] = []

        def sync_new() -> None:
            removed.extend(sync_schedules(second, new, job_types=["tick"]))
            second.commit()
            done.set()

        thread = threading.Thread(target=sync_new)
        thread.start()
        wait_until(
            lambda: autocommit_conn.execute(
                "select 1 from pg_stat_activity where pid = %s and wait_event = 'advisory'",
                (second.info.backend_pid,),
            ).fetchone(),
            what="the second sync waiting on the sync lock",
        )
        assert not done.is_set()
        first.commit()
        thread.join(10)

    assert done.is_set()
    assert removed == ["a"]
    assert names_and_origins(autocommit_conn) == [("b", "registry")]


# --- typed errors at definition --------------------------------------------------------------


@pytest.mark.parametrize(
    "cron", ["* * *", "61 * * * *", "0 0 30 2 *", "0 0 31 4 *", "*/0 * * * *", ""]
)
def test_registry_schedule_with_an_invalid_cron_raises_invalid_cron(cron: str) -> None:
    registry = runledger.Registry()

    with pytest.raises(InvalidCron) as caught:
        registry.schedule("bad", cron=cron, job_type="tick")

    assert (caught.value.name, caught.value.cron) == ("bad", cron)
    assert registry.schedules() == ()


def test_registry_schedule_with_an_unknown_timezone_raises_unknown_timezone() -> None:
    registry = runledger.Registry()

    with pytest.raises(UnknownTimezone) as caught:
        registry.schedule("bad", cron="* * * * *", job_type="tick", timezone="Mars/Olympus")

    assert (caught.value.name, caught.value.timezone) == ("bad", "Mars/Olympus")
    assert registry.schedules() == ()


def test_a_schedule_without_a_queue_uses_its_handlers_queue(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    from runledger.runtime.scheduler import Scheduler

    registry = runledger.Registry()

    @registry.handler("mail.digest", queue="mail")
    def digest(ctx: runledger.JobContext, payload: Any) -> None:
        return None

    registry.schedule("digest", cron="0 6 * * *", job_type="mail.digest")
    with runledger.Store(dsn) as store:
        Scheduler(store, registry).sync()
    assert [s.queue for s in runledger.list_schedules(autocommit_conn)] == ["mail"]


# --- stored schedules that cannot fire -------------------------------------------------------

INSERT_RAW_SCHEDULE = """
insert into runledger.schedules (name, cron, timezone, job_type, next_run_at)
values (%s, %s, %s, 'tick', now() - interval '1 minute')
"""
UNFIREABLE = [("feb30", "0 0 30 2 *", "UTC"), ("mars", "* * * * *", "Mars/Olympus")]
"""Rows no Registry accepts any more, as a hand-written INSERT or an older version left them."""


def insert_unfireable(conn: psycopg.Connection[Any]) -> None:
    for row in UNFIREABLE:
        conn.execute(INSERT_RAW_SCHEDULE, row)


def test_stored_schedules_that_cannot_fire_are_logged_once_and_skipped_while_others_fire(
    dsn: str, autocommit_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runledger")
    insert_unfireable(autocommit_conn)
    ran: list[uuid.UUID] = []
    registry = runledger.Registry()
    registry.handler("tick")(lambda ctx, payload: ran.append(ctx.job_id))
    registry.schedule("good-1", cron=YEARLY, job_type="tick")
    registry.schedule("good-2", cron=YEARLY, job_type="tick")

    with runledger.Runtime(
        dsn, registry, concurrency=1, listen=False, poll_interval=0.1, schedule_interval=0.1
    ) as rt:
        # One after the other: the scheduler goes round more than once beside the bad rows.
        for name in ("good-1", "good-2"):
            make_due(autocommit_conn, name)
            wait_until(lambda: schedule_jobs(autocommit_conn, name), what=f"{name} to fire")  # noqa: B023
        wait_until(lambda: len(ran) == 2, what="both scheduled jobs to run")
        assert all(loop.alive() for loop in rt.loops())

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sorted(r.getMessage() for r in errors) == sorted(
        r.getMessage() for r in errors if r.name == "runledger.scheduler"
    ), "only the scheduler logs errors: no loop failed"
    feb30 = [r.getMessage() for r in errors if "'feb30'" in r.getMessage()]
    mars = [r.getMessage() for r in errors if "'mars'" in r.getMessage()]
    assert len(feb30) == 1, feb30  # once, not at every round
    assert "0 0 30 2 *" in feb30[0]
    assert len(mars) == 1, mars
    assert "Mars/Olympus" in mars[0]
    assert schedule_jobs(autocommit_conn, "feb30") == []
    assert schedule_row(autocommit_conn, "feb30").enabled is True  # left for a person to fix


def test_fire_due_skips_a_stored_schedule_that_cannot_fire_and_reports_it(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    insert_unfireable(autocommit_conn)
    upsert_schedule(autocommit_conn, ScheduleSpec(name="good", cron=YEARLY, job_type="tick"))
    make_due(autocommit_conn, "good")
    reported: list[Unfireable] = []

    fired = fire_due(autocommit_conn, on_unfireable=reported.append)

    assert [f.name for f in fired] == ["good"]
    assert [(u.name, u.cron, u.timezone) for u in reported] == UNFIREABLE
    assert isinstance(reported[0].error, InvalidCron)
    assert reported[0].error.name == "feb30"
    assert isinstance(reported[1].error, UnknownTimezone)
    # Skipped ones are not even read again (they would take the places of due schedules).
    assert fire_due(autocommit_conn, skip=reported, on_unfireable=reported.append) == []
    assert len(reported) == 2


def test_a_stored_schedule_that_cannot_fire_can_be_paused_and_resuming_it_names_it(
    autocommit_conn: psycopg.Connection[Any],
) -> None:
    insert_unfireable(autocommit_conn)

    pause_schedule(autocommit_conn, "feb30")
    with pytest.raises(InvalidCron) as caught:
        resume_schedule(autocommit_conn, "feb30")

    assert (caught.value.name, caught.value.cron) == ("feb30", "0 0 30 2 *")
    assert schedule_row(autocommit_conn, "feb30").enabled is False
    assert autocommit_conn.execute("select 1").fetchone() == (1,)


def test_worker_cli_keeps_running_beside_a_stored_schedule_that_cannot_fire(
    dsn: str, autocommit_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    insert_unfireable(autocommit_conn)
    (tmp_path / "cli_app.py").write_text(
        "import runledger\n"
        "registry = runledger.Registry()\n"
        "registry.handler('tick')(lambda ctx, payload: None)\n"
        f"registry.schedule('good', cron={YEARLY!r}, job_type='tick')\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEDGER_")}
    environ.update(RUNLEDGER_POLL_INTERVAL="0.1")
    worker = subprocess.Popen(
        [sys.executable, "-m", "runledger.cli", "worker", "--dsn", dsn,
         "--app", "cli_app:registry", "--no-listen"],
        cwd=tmp_path, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (
                worker.poll() is not None
                or any(s.name == "good" for s in list_schedules(autocommit_conn))
            ),
            what="the worker to sync its schedule",
        )
        make_due(autocommit_conn, "good")
        wait_until(
            lambda: (
                worker.poll() is not None
                or [job[4] for job in schedule_jobs(autocommit_conn, "good")] == ["succeeded"]
            ),
            timeout=20,
            what="the good schedule's job to run",
        )
        assert worker.poll() is None, "the worker exited"
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()

    assert worker.returncode == 0, stderr
    assert "feb30" in stderr
    assert "Traceback" not in stderr
