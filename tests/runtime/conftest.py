"""Fixtures for the runtime tests: runtimes that always stop, polls with a deadline, job reads.

``runtime(registry, ...)`` builds and starts a ``runledger.Runtime`` on the test's database with
settings small enough for tests (0.2 s polls, 2 s leases, 0.2 s reaper rounds); every runtime a
test builds is stopped when the test ends, whatever happened. Runtimes poll only unless a test
asks for ``listen=True``: the listener looks at its stop flag once a second, which would add up
to a second to every test's teardown; the tests of wake-ups, cancel notifications and shutdown
ask for it.

``wait_until(predicate, timeout)`` polls until the predicate is true and fails the test with a
message if the deadline passes. ``wait_for_job(job_id, status)`` does that for a job's status
and returns the job's record.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import runledger

RuntimeFactory = Callable[..., runledger.Runtime]
WaitUntil = Callable[..., None]
WaitForJob = Callable[..., runledger.JobRecord]

POLL = 0.02


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` every 20 ms until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(POLL)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> WaitUntil:
    """``wait_until(predicate, timeout=10.0, what="...")``: poll with a deadline."""
    return wait_until


@pytest.fixture
def runtime(dsn: str) -> Iterator[RuntimeFactory]:
    """``runtime(registry, **options)``: a started Runtime on the test's database.

    Options are ``Runtime``'s keywords; the defaults here are concurrency 2, poll every 0.2 s
    without LISTEN, 2 s leases, a reaper round every 0.2 s and a 5 s shutdown deadline.
    ``start=False`` returns it unstarted. Every runtime built here is stopped (newest first)
    when the test ends.
    """
    built: list[runledger.Runtime] = []

    def build(
        registry: runledger.Registry,
        *,
        concurrency: int = 2,
        poll_interval: float = 0.2,
        lease_seconds: float = 2.0,
        reap_interval: float = 0.2,
        shutdown_timeout: float = 5.0,
        listen: bool = False,
        start: bool = True,
        **options: Any,
    ) -> runledger.Runtime:
        rt = runledger.Runtime(
            dsn,
            registry,
            concurrency=concurrency,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
            reap_interval=reap_interval,
            shutdown_timeout=shutdown_timeout,
            listen=listen,
            **options,
        )
        built.append(rt)
        if start:
            rt.start()
        return rt

    try:
        yield build
    finally:
        for rt in reversed(built):
            rt.stop()


@pytest.fixture
def observer(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session on the test's database (autocommit): sees committed rows only."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def wait_for_job(observer: psycopg.Connection[Any]) -> WaitForJob:
    """``wait_for_job(job_id, status, timeout=10.0)``: poll until the job has ``status``."""

    def wait(job_id: uuid.UUID, status: str, timeout: float = 10.0) -> runledger.JobRecord:
        deadline = time.monotonic() + timeout
        while True:
            job = runledger.get_job(observer, job_id)
            if job.status == status:
                return job
            if time.monotonic() > deadline:
                pytest.fail(
                    f"job {job_id} is still {job.status} (attempt {job.attempt}, "
                    f"last error {job.last_error!r}) after {timeout} s; expected {status}"
                )
            time.sleep(POLL)

    return wait


@pytest.fixture
def store(dsn: str) -> Iterator[runledger.Store]:
    """A ``runledger.Store`` on the test's database (up to 4 connections), closed after."""
    s = runledger.Store(dsn, min_size=1, max_size=4)
    try:
        yield s
    finally:
        s.close()
