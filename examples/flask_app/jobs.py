"""The example's jobs: a welcome email rendered, then sent, as a two-step workflow.

Both the web process (to check job types and apply the handlers' defaults when enqueueing)
and the worker (``flask --app examples.flask_app.app runledger worker``) import this registry.
"""

from __future__ import annotations

from typing import Any

import runledger
from runledger import JobContext, Registry, WorkflowBuilder

registry = Registry()


@registry.handler("email.render", max_attempts=3, timeout_seconds=10)
def render(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Build the message; its output is what the ``send`` step reads in ``ctx.upstream``."""
    user: dict[str, Any] = ctx.workflow_input  # type: ignore[assignment]
    return {
        "to": user["email"],
        "subject": "Welcome!",
        "body": f"Hello {user['email']}, thanks for signing up.",
    }


@registry.handler("email.send", queue="mail", max_attempts=5, timeout_seconds=30)
def send(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Record the email in the outbox through ``ctx.conn``.

    The row commits in the same transaction as the step's success, so a retried attempt never
    sends twice. A real app would call its mail provider here with an idempotency key.
    """
    message: dict[str, Any] = ctx.upstream["render"]  # type: ignore[assignment]
    user: dict[str, Any] = ctx.workflow_input  # type: ignore[assignment]
    ctx.conn.execute(
        "insert into sent_emails (user_id, recipient, subject, body) values (%s, %s, %s, %s)",
        (user["user_id"], message["to"], message["subject"], message["body"]),
    )
    return {"sent_to": message["to"]}


def welcome_workflow(user_id: int, email: str) -> runledger.Workflow:
    """render -> send for one new user; the user id keeps a retried signup to one run."""
    return (
        WorkflowBuilder("user.welcome")
        .idempotency_key(f"user-{user_id}")
        .input({"user_id": user_id, "email": email})
        .result_step("send")
        .step("render").job("email.render")
        .step("send").after("render").job("email.send")
        .build()
    )  # fmt: skip
