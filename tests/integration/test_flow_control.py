"""Flow control in the claim: per-key concurrency, queue concurrency and rate limits, and
paused queues, enforced by the one claim statement across connections (schema 9)."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import runledger
from runledger import AttemptOutcome, JobStatus
from runledger.errors import IdempotencyConflict
from runledger.postgres.attempts import (
    CLAIM_JOBS,
    CLAIM_PLAIN,
    AttemptResult,
    Claim,
    ClaimedJob,
    claim_params,
    claim_round,
    finish,
)
from runledger.postgres.channels import JOBS
from runledger.postgres.retention import sweep_orphan_events

Conn = psycopg.Connection[Any]


@pytest.fixture
def other(dsn: str) -> Iterator[Conn]:
    """A second claiming session (not autocommit): another runtime."""
    with psycopg.connect(dsn) as connection:
        yield connection


def take(conn: Conn, limit: int = 10, queues: tuple[str, ...] = ("default",)) -> Claim:
    """Claim in ``conn``'s transaction, left open (the caller commits)."""
    return claim_round(
        conn, worker="w", queues=queues, job_types=["t"], limit=limit, lease_seconds=60
    )


def claim_now(conn: Conn, limit: int = 10, queues: tuple[str, ...] = ("default",)) -> Claim:
    got = take(conn, limit, queues)
    conn.commit()
    return got


def succeed(conn: Conn, *jobs: ClaimedJob) -> None:
    finish(
        conn,
        [
            AttemptResult(
                job_id=j.id, lease_token=j.lease_token, status=JobStatus.SUCCEEDED,
                outcome=AttemptOutcome.SUCCEEDED,
            )
            for j in jobs
        ],
    )  # fmt: skip
    conn.commit()


def running_with_key(observer: Conn, key: str) -> int:
    row = observer.execute(
        "select count(*) from only runledger.jobs where status = 'running'"
        " and concurrency_key = %s",
        (key,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def running(observer: Conn) -> int:
    row = observer.execute(
        "select count(*) from only runledger.jobs where status = 'running'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def later() -> datetime.datetime:
    """An hour from now: a job due then stays queued through a test."""
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)


def ids(got: Claim) -> set[uuid.UUID]:
    return {j.id for j in got.jobs}


def test_a_key_runs_at_most_its_limit_and_passes_on_when_one_finishes(conn: Conn) -> None:
    keyed = [runledger.enqueue(conn, "t", {"n": n}, concurrency_key="k") for n in range(3)]
    conn.commit()

    first = claim_now(conn)
    assert ids(first) == {keyed[0]}
    assert first.deferred == 2  # the other two were candidates, turned away by the key
    assert claim_now(conn).jobs == ()  # the key is full: its jobs are not even candidates

    succeed(conn, *first.jobs)
    assert ids(claim_now(conn)) == {keyed[1]}


def test_a_job_runs_while_fewer_than_its_own_limit_run_with_its_key(conn: Conn) -> None:
    for n in range(4):
        runledger.enqueue(conn, "t", {"n": n}, concurrency_key="k", concurrency_limit=2)
    conn.commit()
    assert len(claim_now(conn).jobs) == 2
    assert claim_now(conn).jobs == ()


def test_a_full_key_does_not_block_the_jobs_behind_it(conn: Conn) -> None:
    runledger.enqueue(conn, "t", concurrency_key="k", priority=10)
    conn.commit()
    assert len(claim_now(conn).jobs) == 1
    for _ in range(20):
        runledger.enqueue(conn, "t", concurrency_key="k", priority=10)
    free = runledger.enqueue(conn, "t")
    other_key = runledger.enqueue(conn, "t", concurrency_key="j")
    conn.commit()

    assert ids(claim_now(conn, limit=2)) == {free, other_key}


def test_a_key_admitted_by_another_uncommitted_claim_is_skipped_not_waited_for(
    conn: Conn, other: Conn, observer: Conn
) -> None:
    for n in range(3):
        runledger.enqueue(conn, "t", {"n": n}, concurrency_key="k")
    unkeyed = runledger.enqueue(conn, "t")
    conn.commit()

    a = take(conn, limit=1)  # holds the key's lock until it commits
    assert len(a.jobs) == 1
    other.execute("set statement_timeout = '5s'")
    started = time.monotonic()
    b = claim_now(other)
    assert time.monotonic() - started < 2
    # B's snapshot saw no running job with the key, but its admission could not take the
    # key's lock: none of the key's jobs; the unkeyed one is B's
    assert ids(b) == {unkeyed}
    assert b.deferred >= 1
    conn.commit()
    assert running_with_key(observer, "k") == 1
    assert claim_now(other).jobs == ()


def test_two_sessions_interleaved_never_exceed_a_limit(
    conn: Conn, other: Conn, observer: Conn
) -> None:
    for n in range(6):
        runledger.enqueue(conn, "t", {"n": n}, concurrency_key="k", concurrency_limit=2)
    conn.commit()
    a = take(conn, limit=1)
    conn.commit()
    b = take(other, limit=5)
    c = take(conn, limit=5)  # B has not committed: C cannot take the key's lock
    other.commit()
    conn.commit()
    assert len(a.jobs) + len(b.jobs) + len(c.jobs) == 2
    assert running_with_key(observer, "k") == 2


def test_a_paused_queue_is_not_scanned_and_resumes(conn: Conn) -> None:
    mail = runledger.enqueue(conn, "t", queue="mail")
    plain = runledger.enqueue(conn, "t")
    runledger.pause_queue(conn, "mail")
    conn.commit()

    assert ids(claim_now(conn, queues=("mail", "default"))) == {plain}
    runledger.resume_queue(conn, "mail")
    conn.commit()
    assert ids(claim_now(conn, queues=("mail", "default"))) == {mail}


def test_no_job_starts_after_a_pause_commits(dsn: str, conn: Conn, observer: Conn) -> None:
    runledger.enqueue_many(conn, [runledger.Job("t", queue="mail")] * 3_000)
    conn.commit()
    stop = threading.Event()
    rounds = [0, 0]  # claims each thread made, each in a transaction of its own

    def hammer(n: int) -> None:
        with psycopg.connect(dsn) as claimer:
            while not stop.is_set():
                claim_now(claimer, limit=2, queues=("mail",))
                rounds[n] += 1

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while min(rounds) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        runledger.pause_queue(conn, "mail")
        conn.commit()
        row = observer.execute("select clock_timestamp()").fetchone()
        assert row is not None
        committed: datetime.datetime = row[0]
        # every thread goes on claiming for 20 more rounds, all begun after the pause
        after = list(rounds)
        while any(r < a + 20 for r, a in zip(rounds, after, strict=True)):
            assert time.monotonic() < deadline, rounds
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    latest = observer.execute(
        "select max(started_at), count(*) from runledger.job_attempts"
    ).fetchone()
    assert latest is not None
    assert latest[1] >= 20
    assert latest[0] < committed


def test_a_queue_concurrency_limit_holds_and_changes_take_effect(
    conn: Conn, observer: Conn
) -> None:
    runledger.enqueue_many(conn, [runledger.Job("t", queue="mail")] * 10)
    runledger.set_queue_limits(conn, "mail", concurrency=2)
    conn.commit()
    first = claim_now(conn, queues=("mail",))
    assert len(first.jobs) == 2
    assert claim_now(conn, queues=("mail",)).jobs == ()

    succeed(conn, first.jobs[0])
    assert len(claim_now(conn, queues=("mail",)).jobs) == 1

    runledger.set_queue_limits(conn, "mail", concurrency=4)
    conn.commit()
    assert len(claim_now(conn, queues=("mail",)).jobs) == 2

    runledger.set_queue_limits(conn, "mail", concurrency=None)
    conn.commit()
    assert len(claim_now(conn, queues=("mail",)).jobs) == 5


def test_a_queue_and_a_key_limit_apply_together(conn: Conn) -> None:
    for n in range(4):
        runledger.enqueue(conn, "t", {"n": n}, queue="mail", concurrency_key=f"k{n % 2}")
    runledger.set_queue_limits(conn, "mail", concurrency=3)
    conn.commit()
    got = claim_now(conn, queues=("mail",))
    assert len(got.jobs) == 2  # one per key, under the queue's three


def test_a_rate_limit_counts_starts_in_epoch_aligned_windows(conn: Conn, observer: Conn) -> None:
    runledger.enqueue_many(conn, [runledger.Job("t", queue="mail")] * 12)
    runledger.set_queue_limits(conn, "mail", rate=4, per=1.0)
    conn.commit()
    deadline = time.monotonic() + 10
    claimed = 0
    while claimed < 12 and time.monotonic() < deadline:
        claimed += len(claim_now(conn, queues=("mail",)).jobs)
        time.sleep(0.02)  # a poll: claims in a loop, as a runtime would
    assert claimed == 12
    windows = observer.execute(
        "select floor(extract(epoch from started_at)), count(*) from runledger.job_attempts"
        " group by 1 order by 1"
    ).fetchall()
    assert all(n <= 4 for _, n in windows), windows
    assert len(windows) >= 3


def test_a_rate_window_opened_by_a_later_claim_admits_none_for_an_earlier_one(
    conn: Conn, other: Conn
) -> None:
    runledger.enqueue_many(conn, [runledger.Job("t", queue="mail")] * 4)
    runledger.set_queue_limits(conn, "mail", rate=10, per=1.0)
    conn.commit()
    conn.execute("select now()")  # an earlier claim: its transaction (and now()) began
    early = conn.execute("select now()").fetchone()
    assert early is not None
    # the queue's row says a window after this transaction's began
    other.execute(
        "update runledger.queues set window_start = to_timestamp(floor(extract(epoch from"
        " %s::timestamptz)) + 5), window_starts = 1 where queue = 'mail'",
        (early[0],),
    )
    other.commit()
    got = take(conn, queues=("mail",))
    conn.commit()
    assert got.jobs == ()


def test_a_limited_queue_whose_row_is_locked_is_skipped_not_waited_for(
    conn: Conn, other: Conn
) -> None:
    runledger.enqueue(conn, "t", queue="mail")
    plain = runledger.enqueue(conn, "t")
    runledger.set_queue_limits(conn, "mail", concurrency=5)
    conn.commit()
    runledger.set_queue_limits(other, "mail", concurrency=6)  # holds the row, uncommitted
    started = time.monotonic()
    got = claim_now(conn, queues=("mail", "default"))
    assert time.monotonic() - started < 2
    assert ids(got) == {plain}
    other.commit()
    assert len(claim_now(conn, queues=("mail",)).jobs) == 1


def test_a_constrained_claim_refuses_a_stale_snapshot(dsn: str, conn: Conn) -> None:
    runledger.enqueue(conn, "t", concurrency_key="k")
    conn.commit()
    with psycopg.connect(dsn) as rr:
        rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.InvalidTransactionState):
            take(rr)


def test_finishing_a_keyed_job_wakes_the_claimers_of_its_queue(conn: Conn, observer: Conn) -> None:
    runledger.enqueue(conn, "t", concurrency_key="k")
    plain = runledger.enqueue(conn, "t", queue="other")
    conn.commit()
    observer.execute(f"listen {JOBS}")
    keyed_job = claim_now(conn).jobs
    other_job = claim_now(conn, queues=("other",)).jobs
    list(observer.notifies(timeout=0.1))  # drain

    succeed(conn, *other_job)
    assert [n.payload for n in observer.notifies(timeout=0.3)] == []
    succeed(conn, *keyed_job)
    assert [n.payload for n in observer.notifies(timeout=2, stop_after=1)] == ["default"]
    assert plain


@pytest.mark.parametrize("flow", ["keyed", "queue limit"])
def test_cancelling_a_running_constrained_job_wakes_the_claimers_of_its_queue(
    conn: Conn, observer: Conn, flow: str
) -> None:
    # Its slot is free as soon as the cancel commits, whatever its handler still does.
    if flow == "keyed":
        runledger.enqueue(conn, "t", concurrency_key="k")
    else:
        runledger.set_queue_limits(conn, "default", concurrency=1)
        runledger.enqueue(conn, "t")
    queued = runledger.enqueue(conn, "t", queue="other", run_at=later())
    conn.commit()
    observer.execute(f"listen {JOBS}")
    (constrained,) = claim_now(conn).jobs
    list(observer.notifies(timeout=0.1))  # drain

    # A queued job frees no slot.
    assert runledger.cancel_job(conn, queued)
    conn.commit()
    assert [n.payload for n in observer.notifies(timeout=0.3)] == []
    assert runledger.cancel_job(conn, constrained.id)
    conn.commit()
    assert [n.payload for n in observer.notifies(timeout=2, stop_after=1)] == ["default"]


def test_keys_are_stored_by_every_enqueue_path(conn: Conn) -> None:
    registry = runledger.Registry()
    registry.handler(
        "sync", concurrency_key=lambda p: f"tenant:{p['tenant']}", concurrency_limit=2
    )(lambda ctx, p: None)
    registry.handler("t")(lambda ctx, p: None)
    one = runledger.enqueue(conn, "t", concurrency_key="a", concurrency_limit=3)
    from_handler = runledger.enqueue(conn, "sync", {"tenant": 42}, registry=registry)
    own = runledger.enqueue(conn, "sync", {"tenant": 42}, registry=registry, concurrency_key="mine")
    copied = runledger.enqueue_many(
        conn,
        [runledger.Job("sync", {"tenant": n}) for n in range(60)]
        + [runledger.Job("t", concurrency_key="b")],
        registry=registry,
    )
    plain_copy = runledger.enqueue_many(conn, [runledger.Job("t")] * 60)
    conn.commit()

    def stored(job_id: uuid.UUID) -> tuple[str | None, int | None]:
        record = runledger.get_job(conn, job_id)
        return record.concurrency_key, record.concurrency_limit

    assert stored(one) == ("a", 3)
    assert stored(from_handler) == ("tenant:42", 2)
    assert stored(own) == ("mine", 2)
    assert stored(copied[7]) == ("tenant:7", 2)
    assert stored(copied[-1]) == ("b", 1)
    assert stored(plain_copy[0]) == (None, None)


def test_the_key_is_part_of_an_idempotent_request(conn: Conn) -> None:
    runledger.enqueue(conn, "t", idempotency_key="i", concurrency_key="k")
    conn.commit()
    with pytest.raises(IdempotencyConflict):
        runledger.enqueue(conn, "t", idempotency_key="i", concurrency_key="other")
    same = runledger.enqueue(conn, "t", idempotency_key="i", concurrency_key="k")
    assert runledger.get_job(conn, same).concurrency_key == "k"


def test_workflow_steps_carry_their_keys_to_their_jobs(conn: Conn) -> None:
    registry = runledger.Registry()
    registry.handler("t", concurrency_key=lambda p: f"tenant:{p['tenant']}")(lambda c, p: None)
    workflow = (
        runledger.WorkflowBuilder("w")
        .step("a", job="t", payload={"tenant": 1}, concurrency_key="first", concurrency_limit=2)
        .step("b", job="t", payload={"tenant": 1}, after="a")
        .concurrency("second")
        .step("c", job="t", payload={"tenant": 7}, after="a")
        .build()
    )
    run_id = runledger.enqueue_workflow(conn, workflow, registry=registry)
    conn.commit()
    a = claim_now(conn)
    assert [j.step_key for j in a.jobs] == ["a"]
    succeed(conn, *a.jobs)  # releases b and c: their jobs are inserted now
    rows = conn.execute(
        "select step_key, concurrency_key, concurrency_limit from runledger.jobs"
        " where workflow_run_id = %s order by step_key",
        (run_id,),
    ).fetchall()
    assert rows == [("a", "first", 2), ("b", "second", 1), ("c", "tenant:7", 1)]


def test_jobs_of_full_keys_cost_one_hash_probe_each(conn: Conn) -> None:
    # A backlog of a full key at the head of the queue is passed over row by row: each row
    # must cost a probe of a set built once, not a count of the key's running jobs.
    runledger.enqueue(conn, "t", concurrency_key="k", priority=5)
    conn.commit()
    assert len(claim_now(conn).jobs) == 1
    runledger.enqueue_many(conn, [runledger.Job("t", concurrency_key="k", priority=5)] * 500)
    free = runledger.enqueue(conn, "t")
    conn.commit()
    params = claim_params(
        worker="w", queues=["default"], job_types=["t"], limit=1, lease_seconds=60
    )
    conn.execute("set local plan_cache_mode = force_generic_plan")
    plan = "\n".join(
        r[0]
        for r in conn.execute(
            "explain (analyze, buffers, costs off, timing off) " + CLAIM_JOBS, params
        ).fetchall()
    )
    conn.rollback()
    assert "hashed SubPlan" in plan, plan
    assert "loops=500" not in plan and "loops=501" not in plan, plan
    assert ids(claim_now(conn, limit=1)) == {free}


def plain_claim(conn: Conn, queues: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The rows of ``CLAIM_PLAIN`` alone for ``queues`` (committed)."""
    params = claim_params(worker="w", queues=queues, job_types=["t"], limit=10, lease_seconds=60)
    rows = conn.execute(CLAIM_PLAIN, params).fetchall()
    conn.commit()
    return rows


def test_a_claim_of_queues_without_flow_control_takes_the_plain_statement(conn: Conn) -> None:
    # Flow control on another queue (a keyed job, a pause, a limit) does not concern it.
    runledger.enqueue(conn, "t")
    runledger.enqueue(conn, "t", queue="other", concurrency_key="k")
    runledger.pause_queue(conn, "paused")
    runledger.set_queue_limits(conn, "limited", concurrency=1)
    conn.commit()

    got = claim_now(conn)

    assert (len(got.jobs), got.flow_control) == (1, False)
    # With nothing left to claim, the plain statement still answers with its gate.
    assert [(row[0], row[-1]) for row in plain_claim(conn, ("default",))] == [(None, False)]


@pytest.mark.parametrize("flow", ["keyed job", "paused", "concurrency", "rate"])
def test_a_claim_of_a_queue_with_flow_control_takes_the_flow_control_statement(
    conn: Conn, observer: Conn, flow: str
) -> None:
    plain = runledger.enqueue(conn, "t")
    if flow == "keyed job":
        # Not yet due: a keyed job queued at all is enough.
        runledger.enqueue(conn, "t", concurrency_key="k", run_at=later())
    elif flow == "paused":
        runledger.pause_queue(conn, "default")
    elif flow == "concurrency":
        runledger.set_queue_limits(conn, "default", concurrency=5)
    else:
        runledger.set_queue_limits(conn, "default", rate=5, per=1.0)
    conn.commit()
    queues = ("elsewhere", "default")

    # The plain statement claims nothing of it, and says why.
    assert [(row[0], row[-1]) for row in plain_claim(conn, queues)] == [(None, True)]
    assert running(observer) == 0
    got = claim_now(conn, queues=queues)
    assert got.flow_control
    assert ids(got) == (set() if flow == "paused" else {plain})


def test_the_flow_control_statement_first_claims_queues_without_flow_control(
    conn: Conn,
) -> None:
    # A claimer that found flow control last time sends the flow-control claim first: it is
    # correct for any queue, and says when the plain one would do again.
    job = runledger.enqueue(conn, "t")
    conn.commit()
    got = claim_round(
        conn, worker="w", queues=["default"], job_types=["t"], limit=10, lease_seconds=60,
        flow_control=True,
    )  # fmt: skip
    conn.commit()
    assert (ids(got), got.flow_control) == ({job}, False)


def watch(observer: Conn, errors: list[BaseException]) -> tuple[int, int]:
    """Until the queue "mail" is empty (or a thread failed): the most running jobs of one key,
    and of the queue, in any snapshot the observer took."""
    worst_key = worst_queue = 0
    deadline = time.monotonic() + 20
    while not errors and time.monotonic() < deadline:
        row = observer.execute(
            "select coalesce(max(n), 0), coalesce(sum(n), 0) from (select count(*) as n"
            " from only runledger.jobs where status = 'running' group by concurrency_key) s"
        ).fetchone()
        assert row is not None
        worst_key, worst_queue = max(worst_key, row[0]), max(worst_queue, row[1])
        left = observer.execute(
            "select count(*) from only runledger.jobs where queue = 'mail'"
        ).fetchone()
        if left == (0,):
            break
    return worst_key, worst_queue


def test_claims_finishes_and_setting_changes_racing_never_exceed_a_limit(
    dsn: str, conn: Conn, observer: Conn
) -> None:
    # Four claimers claim and finish keyed jobs of a limited queue while another session
    # keeps changing the queue's settings. In every snapshot an observer takes, no key and
    # not the queue is over its limit; nothing deadlocks or fails.
    jobs = [
        runledger.Job("t", {"n": n}, queue="mail", concurrency_key=f"k{n % 3}",
                      concurrency_limit=2)
        for n in range(600)
    ]  # fmt: skip
    runledger.enqueue_many(conn, jobs)
    runledger.set_queue_limits(conn, "mail", concurrency=4)
    conn.commit()
    stop = threading.Event()
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            with psycopg.connect(dsn) as c:
                while not stop.is_set():
                    got = claim_now(c, limit=3, queues=("mail",))
                    if got.jobs:
                        succeed(c, *got.jobs)
        except BaseException as err:
            errors.append(err)
            raise

    def changer() -> None:
        try:
            with psycopg.connect(dsn) as c:
                n = 0
                while not stop.is_set():
                    n += 1
                    if n % 3 == 0:
                        runledger.pause_queue(c, "mail")
                    elif n % 3 == 1:
                        runledger.resume_queue(c, "mail")
                    runledger.set_queue_limits(c, "mail", concurrency=3 + n % 2)
                    c.commit()
        except BaseException as err:
            errors.append(err)
            raise

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    threads.append(threading.Thread(target=changer))
    for thread in threads:
        thread.start()
    try:
        worst_key, worst_queue = watch(observer, errors)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert worst_key <= 2
    assert worst_queue <= 4
    assert observer.execute(
        "select count(*) from runledger.jobs where status = 'succeeded'"
    ).fetchone() == (600,)


def test_the_orphan_sweep_prunes_old_queue_events_and_leaves_the_settings(conn: Conn) -> None:
    runledger.enqueue(conn, "t", queue="mail")
    runledger.pause_queue(conn, "mail", by="ops")
    conn.execute("update runledger.events set occurred_at = now() - interval '40 days'")
    conn.commit()

    swept = sweep_orphan_events(conn, datetime.timedelta(days=30))
    conn.commit()

    # queue.* events name neither a job nor a run: old ones go with the orphans (the job's
    # own event stays, its job exists); the pause itself is in runledger.queues
    kinds = [r[0] for r in conn.execute("select kind from runledger.events").fetchall()]
    assert swept.deleted == 1
    assert kinds == ["job.enqueued"]
    assert runledger.queue_settings(conn, "mail").paused_by == "ops"
    assert claim_now(conn, queues=("mail",)).jobs == ()
