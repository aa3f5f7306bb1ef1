"""The shop's handlers, registered on the project-wide registry.

The runledger app imports this module when Django starts (in the web process, which enqueues,
and in ``manage.py runledger_worker``, which runs), like the admin imports ``admin.py``.
"""

from __future__ import annotations

from typing import Any

from runledger import JobContext
from runledger.contrib.django import registry
from shop.models import Order


@registry.handler("shop.confirm_order", max_attempts=5, timeout_seconds=30)
def confirm_order(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Confirm a new order.

    Jobs run at least once, and this ORM write commits on its own (not with the job's
    success), so it is written to be harmless when repeated. For exactly-once writes, use
    ``ctx.conn``: what a handler writes there commits with the job's success or not at all.
    """
    confirmed = Order.objects.filter(pk=payload["order_id"], status="new").update(
        status="confirmed"
    )
    return {"order_id": payload["order_id"], "confirmed_now": bool(confirmed)}


@registry.handler("shop.daily_report")
def daily_report(ctx: JobContext, payload: Any) -> dict[str, int]:
    """Count the orders; a cron schedule enqueues it every morning."""
    return {"orders": Order.objects.count()}


registry.schedule("shop.daily-report", cron="0 6 * * *", job_type="shop.daily_report")
