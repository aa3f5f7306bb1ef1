"""Orders in the admin, next to runledger's jobs, runs and schedules."""

from django.contrib import admin

from shop.models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    """Orders, newest first."""

    list_display = ("id", "email", "total_cents", "status", "confirm_job_id", "created_at")
    ordering = ("-created_at",)
