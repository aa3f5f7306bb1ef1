"""A ``django.tasks`` function: ``TASKS`` runs it on runledger (RunledgerBackend)."""

from __future__ import annotations

try:
    from django.tasks import task  # Django 6
except ImportError:
    from django_tasks import task  # the backport, on Django 5.2

from shop.models import Order


@task(priority=10)
def send_receipt(order_id: int) -> str:
    """Pretend to email the receipt; the returned text is the task's result."""
    order = Order.objects.get(pk=order_id)
    return f"receipt for order {order.pk} sent to {order.email}"
