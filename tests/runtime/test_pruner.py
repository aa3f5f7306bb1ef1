"""The runtime's pruner: it deletes what its retention policy no longer keeps, logs it, and
leaves the rest (and everything, with retention off) alone."""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

import runledger
from runledger import Retention
from runledger.postgres.attempts import claim
from runledger.postgres.segments import segments
from runledger.runtime import pruner as pruner_module
from runledger.runtime.pruner import Pruner

DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


def old_and_young(conn: psycopg.Connection[Any]) -> tuple[list[uuid.UUID], uuid.UUID]:
    """Three cancelled jobs that finished ten days ago and one that finished now."""
    old = [runledger.enqueue(conn, "prune.x") for _ in range(3)]
    young = runledger.enqueue(conn, "prune.x")
    for job in [*old, young]:
        runledger.cancel_job(conn, job)
    conn.execute(
        "update runledger.jobs set finished_at = now() - interval '10 days' where id = any(%s)",
        (old,),
    )
    return old, young


class RecordedStop(threading.Event):
    """A stop event whose waits return at once and are recorded, so that a test sees the
    pauses and waits a pruner asks for without spending them."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.is_set()


def run_one(conn: psycopg.Connection[Any]) -> uuid.UUID:
    """A job claimed and left running, as a busy runtime's."""
    job_id = runledger.enqueue(conn, "prune.busy")
    with conn.transaction():
        claim(conn, worker="busy", queues=["default"], job_types=["prune.busy"], limit=1,
              lease_seconds=300)  # fmt: skip
    return job_id


def remaining(conn: psycopg.Connection[Any]) -> set[uuid.UUID]:
    return {row[0] for row in conn.execute("select id from runledger.jobs").fetchall()}


def test_a_runtime_prunes_by_its_policy_at_start(
    dsn: str, autocommit_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    old, young = old_and_young(autocommit_conn)
    caplog.set_level(logging.INFO, logger="runledger")
    with runledger.Runtime(
        dsn, runledger.Registry(), listen=False, retention=Retention(cancelled=3 * DAY)
    ) as runtime:
        assert runtime.pruner is not None
        deadline = time.monotonic() + 20
        while remaining(autocommit_conn) != {young}:
            assert time.monotonic() < deadline, "the runtime never pruned the old jobs"
            autocommit_conn.execute("select pg_sleep(0.05)")
    assert runtime.pruner.total.jobs == len(old)
    messages = [r.getMessage() for r in caplog.records]
    assert any("retention: keeps finished jobs and workflow runs succeeded 7d, failed 30d, "
               "cancelled 3d; older ones are pruned every 60 s; their events with their "
               "segment, a new one every 617m" in m for m in messages)  # fmt: skip
    assert any(m.startswith("pruned 3 jobs and 0 workflow runs") for m in messages)


def test_a_round_stops_at_its_budget_and_the_next_goes_on(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    old, young = old_and_young(autocommit_conn)
    with runledger.Store(dsn) as store:
        pruner = Pruner(store, Retention(cancelled=DAY), budget=0.0)
        assert pruner.prune_once().jobs == 0  # no time for even one batch
        assert remaining(autocommit_conn) == {*old, young}
        pruner.budget = 10.0
        stop = threading.Event()
        assert pruner.prune_once(stop).jobs == 3
        assert remaining(autocommit_conn) == {young}
        stop.set()
        assert pruner.prune_once(stop).rows == 0


def test_retention_off_starts_no_pruner_thread(dsn: str) -> None:
    with runledger.Runtime(dsn, runledger.Registry(), listen=False, retention=None) as runtime:
        names = {thread.name for thread in threading.enumerate()}
        assert "runledger-reaper-0" in names
        assert "runledger-pruner-0" not in names
        assert runtime.pruner is None


def test_a_finished_pass_of_the_orphan_sweep_waits_before_the_next(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    def orphan() -> None:
        autocommit_conn.execute(
            "insert into runledger.events (kind, job_id, occurred_at) "
            "values ('job.enqueued', gen_random_uuid(), now() - interval '10 days')"
        )

    with runledger.Store(dsn) as store:
        # Succeeded jobs kept forever: the events go row by row, and orphans by the sweep.
        pruner = Pruner(store, Retention(succeeded=None, cancelled=DAY), vacuum=False)
        orphan()
        assert pruner.prune_once().events == 1  # a pass, to the newest event
        orphan()
        assert pruner.prune_once().events == 0  # within the hour: no new pass
        pruner.sweep_every = 0.0
        assert pruner.prune_once().events == 1


def test_while_the_queue_has_a_backlog_the_pruner_pauses_to_keep_its_share(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    _old, young = old_and_young(autocommit_conn)
    stop = RecordedStop()
    with runledger.Store(dsn) as store:
        pruner = Pruner(
            store, Retention(cancelled=DAY, busy_share=0.25), vacuum=False, busy=lambda: True
        )
        began = time.monotonic()
        assert pruner.prune_once(stop).jobs == 3
        took = time.monotonic() - began
    assert remaining(autocommit_conn) == {young}
    # One pause per transaction (a batch of jobs and one of runs per state, the sweep's
    # windows), each three times its transaction's length: 3 to 1 is a share of a quarter.
    assert len(stop.waits) >= 6
    assert all(pause > 0 for pause in stop.waits)
    assert sum(stop.waits) <= 3 * took
    assert sum(stop.waits) >= 3 * took * 0.5


def test_jobs_running_without_a_backlog_leave_the_pruner_unpaced(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    # A queue that keeps up with its jobs has time to spare: the pruner need not yield.
    _old, young = old_and_young(autocommit_conn)
    busy = run_one(autocommit_conn)
    stop = RecordedStop()
    with runledger.Store(dsn) as store:
        pruner = Pruner(
            store, Retention(cancelled=DAY, busy_share=0.25), vacuum=False, busy=lambda: False
        )
        assert pruner.prune_once(stop).jobs == 3
    assert stop.waits == []
    assert remaining(autocommit_conn) == {young, busy}


def test_a_share_of_one_never_pauses(dsn: str, autocommit_conn: psycopg.Connection[Any]) -> None:
    old_and_young(autocommit_conn)
    stop = RecordedStop()
    with runledger.Store(dsn) as store:
        pruner = Pruner(
            store, Retention(cancelled=DAY, busy_share=1.0), vacuum=False, busy=lambda: True
        )
        assert pruner.prune_once(stop).jobs == 3
    assert stop.waits == []


def _blocked_registry(release: threading.Event, started: threading.Event) -> runledger.Registry:
    registry = runledger.Registry()

    @registry.handler("prune.blocked")
    def blocked(ctx: runledger.JobContext, payload: object) -> None:
        started.set()
        release.wait(30)

    return registry


@pytest.mark.parametrize(
    ("queued", "waited", "backlog"), [(3, 60, True), (1, 60, False), (3, -2, False)]
)
def test_a_runtime_paces_its_pruner_only_while_due_jobs_wait_for_a_slot(
    dsn: str,
    autocommit_conn: psycopg.Connection[Any],
    queued: int,
    waited: int,
    backlog: bool,
) -> None:
    # Two slots: a claim for two that gets both of three jobs due a minute ago leaves one
    # waiting (a backlog); one that gets the only job leaves a slot free; one that fills
    # both with jobs as they fall due meets a queue that keeps up (a burst, not a backlog):
    # due two seconds on, they are claimed within a poll of it, however long the start took.
    old_and_young(autocommit_conn)
    release, started = threading.Event(), threading.Event()
    for _ in range(queued):
        runledger.enqueue(autocommit_conn, "prune.blocked")
    autocommit_conn.execute(
        "update runledger.jobs set run_at = now() - make_interval(secs => %s)"
        " where job_type = 'prune.blocked'",
        (waited,),
    )
    policy = Retention(cancelled=DAY, busy_share=0.25)
    try:
        with runledger.Runtime(
            dsn, _blocked_registry(release, started), listen=False, retention=policy,
            concurrency=2, prefetch=0, poll_interval=0.05,
        ) as runtime:  # fmt: skip
            assert started.wait(20)
            assert runtime.pruner is not None
            assert runtime.pool.backlog() is backlog
            stop = RecordedStop()
            runtime.pruner.prune_once(stop)
            assert (stop.waits != []) is backlog
            release.set()
    finally:
        release.set()


def test_a_round_out_of_budget_is_followed_at_once_and_warns_when_it_lasts(
    dsn: str,
    autocommit_conn: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _old, young = old_and_young(autocommit_conn)
    monkeypatch.setattr(pruner_module, "BEHIND_WARNING", 0.0)
    caplog.set_level(logging.INFO, logger="runledger.pruner")
    policy = Retention(succeeded=None, failed=None, cancelled=DAY)
    stop = RecordedStop()
    with runledger.Store(dsn) as store:
        # Budget for one transaction: the jobs' batch, not the runs' after it.
        pruner = Pruner(store, policy, budget=1e-9, interval=60.0, vacuum=False)
        pruner.step(stop)
        assert remaining(autocommit_conn) == {young}
        assert pruner.behind
        assert 60.0 not in stop.waits  # the next round starts at once
        assert any(
            r.levelno == logging.WARNING and r.getMessage().startswith("pruning is behind")
            for r in caplog.records
        )
        caplog.clear()
        pruner.budget = 10.0
        pruner.step(stop)  # a round with nothing left due: caught up
        assert not pruner.behind
        assert stop.waits[-1] == 60.0
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def events_of(conn: psycopg.Connection[Any], jobs: list[uuid.UUID]) -> int:
    row = conn.execute(
        "select count(*) from runledger.events where job_id = any(%s)", (jobs,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_with_every_state_pruned_the_events_go_with_their_segment(
    dsn: str, autocommit_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    conn = autocommit_conn
    old, young = old_and_young(conn)
    caplog.set_level(logging.INFO, logger="runledger.pruner")
    with runledger.Store(dsn) as store:
        pruner = Pruner(store, Retention(cancelled=DAY), vacuum=False, segment_length=HOUR)
        assert pruner.segment_length == HOUR
        done = pruner.prune_once()
        # The jobs went, their events stay in segment 0; it was opened just now: not yet due.
        assert (done.jobs, done.events) == (3, 0)
        assert events_of(conn, old) == 6
        assert [s.segment for s in segments(conn)] == [0]
        conn.execute("update runledger.event_segments set opened_at = now() - interval '2 hours'")
        assert pruner.prune_once().rows == 0
        assert [s.segment for s in segments(conn)] == [0, 1]  # segment 0 closed now
        conn.execute(
            "update runledger.event_segments set closed_at = now() - interval '2 days', "
            "opened_at = now() - interval '3 days' where segment = 0"
        )
        assert pruner.prune_once().events == 6

    assert events_of(conn, old) == 0
    assert events_of(conn, [young]) == 2  # copied to segment 1 (enqueued, cancelled)
    assert [s.segment for s in segments(conn)] == [1]
    messages = [r.getMessage() for r in caplog.records]
    assert "opened segment 1 of runledger.events" in messages
    assert any(m.startswith("dropped segment 0 of runledger.events: 6 events, after copying 2")
               for m in messages)  # fmt: skip


def test_with_a_state_kept_forever_the_events_go_row_by_row_and_no_segment_opens(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    conn = autocommit_conn
    old, _young = old_and_young(conn)
    conn.execute("update runledger.event_segments set opened_at = now() - interval '2 days'")
    policy = Retention(succeeded=None, cancelled=DAY)
    assert policy.segment_length() is None
    with runledger.Store(dsn) as store:
        pruner = Pruner(store, policy, vacuum=False, segment_length=HOUR)
        assert pruner.segment_length is None
        done = pruner.prune_once()
    assert (done.jobs, done.events) == (3, 6)
    assert events_of(conn, old) == 0
    assert [s.segment for s in segments(conn)] == [0]


def test_a_worker_whose_role_may_not_change_the_events_table_goes_on_row_by_row(
    dsn: str, autocommit_conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    conn = autocommit_conn
    old, _young = old_and_young(conn)
    role = f"runledger_app_{uuid.uuid4().hex[:8]}"
    conn.execute(f"create role {role} login")  # ours, above
    try:
        conn.execute(f"grant usage on schema runledger to {role}")
        conn.execute(f"grant select, insert, update, delete on all tables in schema runledger "
                     f"to {role}")  # fmt: skip
        conn.execute(f"grant usage, select on all sequences in schema runledger to {role}")
        conn.execute("update runledger.event_segments set opened_at = now() - interval '2 days'")
        caplog.set_level(logging.INFO, logger="runledger.pruner")
        app_dsn = psycopg.conninfo.make_conninfo(dsn, user=role)
        with runledger.Store(app_dsn) as store:
            pruner = Pruner(store, Retention(cancelled=DAY), vacuum=False, segment_length=HOUR)
            first = pruner.prune_once()
            assert first.jobs == 3
            assert pruner.segment_length is None  # given up
            assert any(
                r.levelno == logging.WARNING and "may not change runledger.events" in r.getMessage()
                for r in caplog.records
            )
            # The next round sweeps up the events the first left behind.
            pruner.sweep_every = 0.0
            conn.execute("update runledger.events set occurred_at = now() - interval '2 days'")
            assert pruner.prune_once().events == 6
        assert events_of(conn, old) == 0
        assert [s.segment for s in segments(conn)] == [0]
    finally:
        conn.execute(f"drop owned by {role}")
        conn.execute(f"drop role {role}")


def test_a_round_out_of_budget_still_opens_and_drops_segments(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    conn = autocommit_conn
    old, young = old_and_young(conn)
    with runledger.Store(dsn) as store:
        pruner = Pruner(
            store, Retention(cancelled=DAY), budget=0.0, vacuum=False, segment_length=HOUR
        )
        conn.execute("update runledger.event_segments set opened_at = now() - interval '2 days'")
        assert pruner.prune_once().jobs == 0  # no time for even one batch of jobs
        assert pruner.behind
        assert [s.segment for s in segments(conn)] == [0, 1]  # a segment opened all the same
        pruner.budget = 10.0
        assert pruner.prune_once().jobs == 3
        pruner.budget = 0.0
        conn.execute(
            "update runledger.event_segments set closed_at = now() - interval '2 days', "
            "opened_at = now() - interval '3 days' where segment = 0"
        )
        assert pruner.prune_once().events == 6  # and dropped all the same
        assert pruner.behind
    assert events_of(conn, old) == 0
    assert events_of(conn, [young]) == 2


def test_each_state_gets_a_batch_in_turn_so_a_busy_one_starves_none(
    dsn: str, autocommit_conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = autocommit_conn
    old, _young = old_and_young(conn)
    # Three succeeded ten days ago (a week's keep), as if they came faster than they went.
    conn.execute("update runledger.jobs set status = 'succeeded' where id = any(%s)", (old,))
    dead = runledger.enqueue(conn, "prune.x")
    runledger.cancel_job(conn, dead)
    conn.execute(
        "update runledger.jobs set status = 'failed', finished_at = now() - interval '40 days' "
        "where id = %s",
        (dead,),
    )
    order: list[str] = []
    real = pruner_module.prune_jobs

    def recorded(*args: Any, **kwargs: Any) -> Any:
        pruned = real(*args, **kwargs)
        order.append(f"{kwargs['status']}:{pruned.jobs}")
        return pruned

    monkeypatch.setattr(pruner_module, "prune_jobs", recorded)
    monkeypatch.setattr(pruner_module, "JOB_BATCH", 1)  # one job a batch: succeeded needs 3
    with runledger.Store(dsn) as store:
        assert Pruner(store, Retention(cancelled=DAY), vacuum=False).prune_once().jobs == 4
    # The dead letter went in the first turn, not after every succeeded job.
    assert order == [
        "succeeded:1", "failed:1", "cancelled:0",
        "succeeded:1", "failed:0",
        "succeeded:1",
        "succeeded:0",
    ]  # fmt: skip
    assert remaining(conn).isdisjoint({*old, dead})
