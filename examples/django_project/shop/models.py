"""An order, with the ids of the work its placement enqueued."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """A placed order. ``confirm_job_id`` is a runledger job, ``receipt_task_id`` the
    ``django.tasks`` result id of its receipt."""

    email = models.EmailField()
    total_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=20, default="new")
    confirm_job_id = models.UUIDField(null=True)
    receipt_task_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order {self.pk} ({self.email})"
