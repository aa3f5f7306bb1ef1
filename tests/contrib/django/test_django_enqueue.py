"""Enqueue on Django's connection: jobs commit and roll back with ``transaction.atomic()``,
nested blocks (savepoints) behave, and outside a block the job commits at once."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import pq

import runledger
from runledger.contrib import django as rl


def count_jobs(observer: psycopg.Connection[Any], job_type: str | None = None) -> int:
    row = observer.execute(
        "select count(*) from runledger.jobs where %(t)s::text is null or job_type = %(t)s",
        {"t": job_type},
    ).fetchone()
    assert row is not None
    return int(row[0])


class Boom(Exception):
    pass


@pytest.fixture
def orders() -> None:
    """An application table next to the ledger, written through Django's cursor."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("create table if not exists rltest_orders (id serial primary key, note text)")
        cur.execute("truncate rltest_orders")


def count_orders(observer: psycopg.Connection[Any]) -> int:
    row = observer.execute("select count(*) from rltest_orders").fetchone()
    assert row is not None
    return int(row[0])


def test_a_committed_atomic_block_keeps_the_job_and_the_row(
    observer: psycopg.Connection[Any], orders: None
) -> None:
    from django.db import connection, transaction

    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("insert into rltest_orders (note) values ('paid')")
        job_id = rl.enqueue("rltest.echo", {"order": "paid"})
        # Not visible to anyone else before the commit.
        assert count_jobs(observer) == 0

    job = runledger.get_job(observer, job_id)
    assert job.status == runledger.JobStatus.QUEUED
    assert job.payload == {"order": "paid"}
    assert count_orders(observer) == 1


def test_a_rolled_back_atomic_block_leaves_no_job_and_no_row(
    observer: psycopg.Connection[Any], orders: None
) -> None:
    from django.db import connection, transaction

    with pytest.raises(Boom), transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("insert into rltest_orders (note) values ('failed')")
        rl.enqueue("rltest.echo", {"order": "failed"})
        raise Boom

    assert count_jobs(observer) == 0
    assert count_orders(observer) == 0


def test_set_rollback_drops_the_job_too(observer: psycopg.Connection[Any]) -> None:
    from django.db import transaction

    with transaction.atomic():
        rl.enqueue("rltest.echo", {})
        transaction.set_rollback(True)

    assert count_jobs(observer) == 0


def test_a_rolled_back_nested_block_loses_only_its_own_job(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import transaction

    with transaction.atomic():
        outer = rl.enqueue("rltest.echo", {"where": "outer"})
        with pytest.raises(Boom), transaction.atomic():
            rl.enqueue("rltest.echo", {"where": "inner"})
            raise Boom
        with transaction.atomic():
            kept = rl.enqueue("rltest.echo", {"where": "second inner"})

    payloads = {
        row[0]: row[1]
        for row in observer.execute("select id, payload from runledger.jobs").fetchall()
    }
    assert payloads == {outer: {"where": "outer"}, kept: {"where": "second inner"}}


def test_a_committed_nested_block_is_rolled_back_with_its_outer_block(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import transaction

    with pytest.raises(Boom), transaction.atomic():
        with transaction.atomic():
            rl.enqueue("rltest.echo", {"where": "inner"})
        raise Boom

    assert count_jobs(observer) == 0


def test_outside_an_atomic_block_the_job_commits_at_once_and_django_stays_in_autocommit(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import connection

    job_id = rl.enqueue("rltest.echo", {"when": "now"})

    assert runledger.get_job(observer, job_id).status == runledger.JobStatus.QUEUED
    assert connection.get_autocommit()
    assert connection.connection.info.transaction_status == pq.TransactionStatus.IDLE


def test_enqueue_many_and_enqueue_workflow_join_the_atomic_block(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import transaction

    workflow = (
        runledger.WorkflowBuilder("rltest.flow")
        .step("a").job("rltest.echo")
        .step("b").after("a").job("rltest.echo")
        .build()
    )  # fmt: skip
    with pytest.raises(Boom), transaction.atomic():
        rl.enqueue_many([runledger.Job("rltest.echo", {"i": i}) for i in range(3)])
        rl.enqueue_workflow(workflow)
        raise Boom
    assert count_jobs(observer) == 0

    with transaction.atomic():
        ids = rl.enqueue_many([runledger.Job("rltest.echo", {"i": i}) for i in range(3)])
        run_id = rl.enqueue_workflow(workflow)

    assert count_jobs(observer) == 4
    assert [runledger.get_job(observer, i).payload for i in ids] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert runledger.get_workflow_run(observer, run_id).status == runledger.RunStatus.RUNNING


def test_a_large_batch_inside_atomic_is_written_and_rolled_back_with_it(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import transaction

    # 200 jobs without keys take the COPY path, through Django's cursor class.
    with pytest.raises(Boom), transaction.atomic():
        rl.enqueue_many([runledger.Job("rltest.echo", {"i": i}) for i in range(200)])
        raise Boom
    assert count_jobs(observer) == 0

    with transaction.atomic():
        rl.enqueue_many([runledger.Job("rltest.echo", {"i": i}) for i in range(200)])
    assert count_jobs(observer) == 200


def test_the_project_registry_applies_handler_defaults(observer: psycopg.Connection[Any]) -> None:
    job_id = rl.enqueue("rltest.mail", {"to": "a@example.com"})

    job = runledger.get_job(observer, job_id)
    assert job.queue == "mail"
    assert job.max_attempts == 2


def test_an_unknown_job_type_is_refused_before_writing_unless_registry_is_none(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import transaction

    with transaction.atomic():
        with pytest.raises(runledger.errors.UnknownJobType) as caught:
            rl.enqueue("nobody.handles.this", {})
        assert caught.value.job_type == "nobody.handles.this"
        # The block is still usable.
        other_service = rl.enqueue("nobody.handles.this", {}, registry=None)

    assert runledger.get_job(observer, other_service).queue == "default"
    assert count_jobs(observer) == 1


def test_an_idempotency_conflict_leaves_the_atomic_block_usable(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import transaction

    with transaction.atomic():
        first = rl.enqueue("rltest.echo", {"n": 1}, idempotency_key="order-1")
        again = rl.enqueue("rltest.echo", {"n": 1}, idempotency_key="order-1")
        with pytest.raises(runledger.errors.IdempotencyConflict):
            rl.enqueue_many(
                [
                    runledger.Job("rltest.echo", {"n": 2}, idempotency_key="order-1"),
                    runledger.Job("rltest.echo", {"n": 3}, idempotency_key="order-3"),
                ]
            )
        later = rl.enqueue("rltest.echo", {"n": 4})

    assert first == again
    assert count_jobs(observer) == 2
    assert runledger.get_job(observer, later).payload == {"n": 4}


def test_after_a_failed_query_in_the_block_enqueue_refuses_and_writes_nothing(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import DatabaseError, connection, transaction

    with transaction.atomic():
        with pytest.raises(DatabaseError), connection.cursor() as cur:
            cur.execute("select * from no_such_table")
        with pytest.raises(runledger.errors.TransactionAborted):
            rl.enqueue("rltest.echo", {})
        transaction.set_rollback(True)

    assert count_jobs(observer) == 0


def test_a_failed_query_in_an_inner_block_leaves_the_outer_block_usable_for_enqueue(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import DatabaseError, connection, transaction

    with transaction.atomic():
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cur:
            cur.execute("select * from no_such_table")
        job_id = rl.enqueue("rltest.echo", {})

    assert runledger.get_job(observer, job_id).status == runledger.JobStatus.QUEUED


def test_a_block_django_marked_for_rollback_is_refused_like_djangos_own_queries(
    observer: psycopg.Connection[Any],
) -> None:
    from django.db import transaction
    from django.db.transaction import TransactionManagementError

    with transaction.atomic():
        # An exception leaving an inner block without a savepoint dooms the outer one.
        with pytest.raises(Boom), transaction.atomic(savepoint=False):
            raise Boom
        with pytest.raises(TransactionManagementError):
            rl.enqueue("rltest.echo", {})

    assert count_jobs(observer) == 0


def test_using_enqueues_on_that_database(
    django_project: Any, observer: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(django_project.other_dsn, autocommit=True) as other:
        runledger.migrate(other)

        job_id = rl.enqueue("rltest.echo", {}, using="other")

        assert runledger.get_job(other, job_id).job_type == "rltest.echo"
    assert count_jobs(observer) == 0


def test_psycopg_connection_is_the_one_under_djangos_wrapper() -> None:
    from django.db import connection

    raw = rl.psycopg_connection()

    assert raw is connection.connection
    assert isinstance(raw, psycopg.Connection)


def test_the_enqueued_ids_are_uuids() -> None:
    assert isinstance(rl.enqueue("rltest.echo", None), uuid.UUID)
