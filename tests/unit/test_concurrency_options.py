"""Concurrency keys as job, handler and step options: validated on construction, resolved
at enqueue (the job's own key wins, then its handler's), and part of a keyed request."""

from __future__ import annotations

from typing import Any

import pytest

import runledger
from runledger import Job
from runledger.core.handler import HandlerDefaults
from runledger.errors import InvalidConcurrencyKey
from runledger.postgres.enqueue import concurrency


@pytest.mark.parametrize(
    ("key", "limit"),
    [("", None), ("  ", 2), ("k", 0), ("k", -1), ("k", True), ("k", 1.5), (None, 2), (7, None)],
)
def test_an_invalid_key_or_limit_cannot_make_a_job(key: Any, limit: Any) -> None:
    with pytest.raises(InvalidConcurrencyKey) as raised:
        Job("t", concurrency_key=key, concurrency_limit=limit)
    assert raised.value.key == key
    assert raised.value.limit == limit
    assert isinstance(raised.value, ValueError)


def test_a_job_takes_a_key_and_a_limit() -> None:
    job = Job("t", concurrency_key="tenant:42", concurrency_limit=3)
    assert (job.concurrency_key, job.concurrency_limit) == ("tenant:42", 3)


def test_the_limit_defaults_to_one() -> None:
    assert concurrency("t", {}, "k", None, None) == ("k", 1)


def test_the_handler_key_is_a_function_of_the_payload() -> None:
    defaults = HandlerDefaults(
        job_type="sync", concurrency_key=lambda p: f"tenant:{p['tenant']}", concurrency_limit=2
    )
    assert concurrency("sync", {"tenant": 42}, None, None, defaults) == ("tenant:42", 2)


def test_a_jobs_own_key_wins_and_takes_the_handlers_limit() -> None:
    defaults = HandlerDefaults(job_type="sync", concurrency_key="shared", concurrency_limit=2)
    assert concurrency("sync", {}, "mine", None, defaults) == ("mine", 2)
    assert concurrency("sync", {}, "mine", 5, defaults) == ("mine", 5)


def test_a_handler_key_function_that_fails_raises_the_option_error() -> None:
    defaults = HandlerDefaults(job_type="sync", concurrency_key=lambda p: p["missing"])
    with pytest.raises(InvalidConcurrencyKey, match="KeyError"):
        concurrency("sync", {}, None, None, defaults)
    blank = HandlerDefaults(job_type="sync", concurrency_key=lambda p: " ")
    with pytest.raises(InvalidConcurrencyKey):
        concurrency("sync", {}, None, None, blank)


def test_a_handler_refuses_an_invalid_default() -> None:
    registry = runledger.Registry()
    with pytest.raises(InvalidConcurrencyKey):
        registry.handler("t", concurrency_key="", concurrency_limit=1)
    with pytest.raises(InvalidConcurrencyKey):
        registry.handler("t", concurrency_key="k", concurrency_limit=0)
    with pytest.raises(InvalidConcurrencyKey):
        registry.handler("t", concurrency_limit=2)
    registry.handler("t", concurrency_key=lambda p: "k", concurrency_limit=2)


def test_the_key_is_part_of_a_keyed_request_and_absent_without_one() -> None:
    plain = Job("t", idempotency_key="i")
    keyed = Job("t", idempotency_key="i", concurrency_key="k")
    other = Job("t", idempotency_key="i", concurrency_key="k", concurrency_limit=2)
    assert len({plain.fingerprint(), keyed.fingerprint(), other.fingerprint()}) == 3
    # jobs without a key keep the fingerprint they had before concurrency keys existed
    assert plain.fingerprint() == runledger.core.job.fingerprint(
        {"job_type": "t", "payload": {}, "queue": None, "priority": 0, "max_attempts": None,
         "timeout_seconds": None}
    )  # fmt: skip
