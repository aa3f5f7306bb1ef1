"""``django.tasks`` functions run by RunledgerBackend."""

from __future__ import annotations

from typing import Any

try:
    from django.tasks import TaskContext, task
except ImportError:
    from django_tasks import TaskContext, task


class PaymentDeclined(Exception):
    """A task's own exception class."""


@task
def add(a: int, b: int) -> int:
    """Add."""
    return a + b


@task(priority=10, queue_name="emails")
def send_email(to: str, subject: str = "") -> str:
    """Pretend to send an email."""
    return f"sent {subject!r} to {to}"


@task(takes_context=True)
def which_attempt(context: TaskContext, label: str) -> dict[str, Any]:
    """Report what the context says."""
    return {
        "attempt": context.attempt,
        "id": context.task_result.id,
        "status": str(context.task_result.status),
        "label": label,
    }


@task
async def double(n: int) -> int:
    """An async task."""
    return n * 2


@task
def decline(amount: int) -> None:
    """Always fails with its own exception."""
    raise PaymentDeclined(f"card declined for {amount}")


@task
def not_json() -> Any:
    """Returns something that is not JSON."""
    return object()


@task
def count_users() -> int:
    """Uses the ORM in a worker thread."""
    from django.contrib.auth.models import User

    return User.objects.count()
