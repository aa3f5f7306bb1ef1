"""Handlers the runledger app autodiscovers when Django starts."""

from __future__ import annotations

from typing import Any

from runledger import JobContext
from runledger.contrib.django import registry

STARTED_IN: list[str] = []


@registry.handler("rltest.echo")
def echo(ctx: JobContext, payload: Any) -> Any:
    """Return the payload."""
    return payload


@registry.handler("rltest.mail", queue="mail", max_attempts=2)
def mail(ctx: JobContext, payload: Any) -> Any:
    """Pretend to send a mail."""
    return {"sent": payload["to"]}


@registry.handler("rltest.count_users")
def count_users(ctx: JobContext, payload: Any) -> int:
    """Use the ORM from a worker thread."""
    from django.contrib.auth.models import User

    return User.objects.count()


registry.schedule("rltest-nightly", cron="0 3 * * *", job_type="rltest.echo", payload={})
