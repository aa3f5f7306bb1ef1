"""The Django worker's retention policy: ``RUNLEDGER_RUNTIME`` over the environment."""

from __future__ import annotations

import datetime

import pytest
from django.test import override_settings

import runledger
from runledger.contrib.django.management.commands.runledger_worker import Command

OPTIONS = {"concurrency": None, "queues": None, "no_listen": False}


def test_runledger_runtime_sets_the_policy_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNLEDGER_KEEP_FAILED", "3d")
    assert Command()._runtime_options(dict(OPTIONS))["retention"] == runledger.Retention(
        failed=datetime.timedelta(days=3)
    )
    policy = runledger.Retention(succeeded=datetime.timedelta(hours=1))
    with override_settings(RUNLEDGER_RUNTIME={"retention": policy}):
        assert Command()._runtime_options(dict(OPTIONS))["retention"] == policy
    with override_settings(RUNLEDGER_RUNTIME={"retention": None}):
        assert Command()._runtime_options(dict(OPTIONS))["retention"] is None
