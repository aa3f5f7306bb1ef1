"""Place an order (its jobs commit with it, or not at all) and look at where it stands."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from runledger.contrib import django as rl
from runledger.contrib.django.models import Job
from shop.models import Order
from shop.tasks import send_receipt

CREDIT_LIMIT_CENTS = 100_000


class OverCreditLimit(Exception):
    """The order is too large; raised after its rows and jobs were written."""


@csrf_exempt  # an API endpoint for curl in this example; keep CSRF on for browser forms
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Create the order, enqueue its confirmation job and its receipt task, in one transaction.

    The credit check runs last, on purpose: when it fails, the rollback takes the order, the
    job and the task with it. Nothing needs ``transaction.on_commit``.
    """
    try:
        email = request.POST["email"]
        total_cents = int(request.POST["total_cents"])
    except (KeyError, ValueError):
        return JsonResponse({"error": "give email and total_cents"}, status=400)
    try:
        with transaction.atomic():
            order = Order.objects.create(email=email, total_cents=total_cents)
            order.confirm_job_id = rl.enqueue("shop.confirm_order", {"order_id": order.pk})
            order.receipt_task_id = send_receipt.enqueue(order.pk).id
            order.save(update_fields=["confirm_job_id", "receipt_task_id"])
            if total_cents > CREDIT_LIMIT_CENTS:
                raise OverCreditLimit(f"{total_cents} cents is over the credit limit")
    except OverCreditLimit as err:
        return JsonResponse({"error": str(err), "kept": "nothing"}, status=400)
    return JsonResponse(
        {
            "order": order.pk,
            "confirm_job": str(order.confirm_job_id),
            "receipt_task": order.receipt_task_id,
        },
        status=201,
    )


@require_GET
def order_detail(request: HttpRequest, pk: int) -> JsonResponse:
    """The order, its confirmation job's status and its receipt task's result."""
    order = get_object_or_404(Order, pk=pk)
    job = Job.objects.get(pk=order.confirm_job_id)  # runledger's read-only model
    receipt = send_receipt.get_result(order.receipt_task_id)
    return JsonResponse(
        {
            "order": order.pk,
            "status": order.status,
            "confirm_job": {"status": job.status, "attempt": job.attempt},
            "receipt": {
                "status": str(receipt.status),
                "result": receipt.return_value if receipt.status == "SUCCESSFUL" else None,
            },
        }
    )
