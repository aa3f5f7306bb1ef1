"""Install the runledger schema, and the state of the read-only models over it.

``InstallSchema`` runs ``runledger.migrate`` (idempotent: a schema installed earlier by
``runledger migrate`` or ``manage.py runledger_migrate`` is kept). The migration is not
atomic, so each SQL migration commits on its own under runledger's advisory lock, exactly as
``runledger migrate`` applies it. The models are unmanaged: creating them writes nothing.
"""

from typing import ClassVar

from django.db import migrations, models
from django.db.migrations.operations.base import Operation

from runledger.contrib.django.operations import InstallSchema


class Migration(migrations.Migration):
    initial = True
    atomic = False

    dependencies: ClassVar[list[tuple[str, str]]] = []

    operations: ClassVar[list[Operation]] = [
        InstallSchema(),
        migrations.CreateModel(
            name="Job",
            fields=[
                ("id", models.UUIDField(primary_key=True, serialize=False)),
                ("queue", models.TextField()),
                ("job_type", models.TextField()),
                ("payload", models.JSONField()),
                (
                    "status",
                    models.TextField(
                        choices=[
                            ("queued", "queued"),
                            ("running", "running"),
                            ("succeeded", "succeeded"),
                            ("failed", "failed"),
                            ("cancelled", "cancelled"),
                        ]
                    ),
                ),
                ("priority", models.SmallIntegerField()),
                ("attempt", models.IntegerField()),
                ("max_attempts", models.IntegerField(null=True)),
                ("timeout_seconds", models.IntegerField(null=True)),
                ("run_at", models.DateTimeField()),
                ("lease_owner", models.TextField(null=True)),
                ("lease_expires_at", models.DateTimeField(null=True)),
                ("started_at", models.DateTimeField(null=True)),
                ("idempotency_key", models.TextField(null=True)),
                ("step_key", models.TextField(null=True)),
                ("output", models.JSONField(null=True)),
                ("last_error", models.TextField(null=True)),
                ("cancel_reason", models.TextField(null=True)),
                ("schedule_name", models.TextField(null=True)),
                ("scheduled_at", models.DateTimeField(null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(null=True)),
            ],
            options={
                "db_table": 'runledger"."jobs',
                "ordering": ["-created_at"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="JobAttempt",
            fields=[
                ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("attempt", models.IntegerField()),
                ("worker", models.TextField()),
                ("started_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(null=True)),
                (
                    "outcome",
                    models.TextField(
                        choices=[
                            ("succeeded", "succeeded"),
                            ("failed", "failed"),
                            ("timed_out", "timed out"),
                            ("lease_expired", "lease expired"),
                            ("cancelled", "cancelled"),
                            ("released", "released"),
                        ],
                        null=True,
                    ),
                ),
                ("error_type", models.TextField(null=True)),
                ("error_message", models.TextField(null=True)),
                ("error_traceback", models.TextField(null=True)),
                ("retry_at", models.DateTimeField(null=True)),
                ("retry_reason", models.TextField(null=True)),
            ],
            options={
                "db_table": 'runledger"."job_attempts',
                "ordering": ["job_id", "attempt", "id"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="Schedule",
            fields=[
                ("name", models.TextField(primary_key=True, serialize=False)),
                ("origin", models.TextField()),
                ("cron", models.TextField()),
                ("timezone", models.TextField()),
                ("job_type", models.TextField()),
                ("payload", models.JSONField()),
                ("queue", models.TextField()),
                ("priority", models.SmallIntegerField()),
                ("max_attempts", models.IntegerField(null=True)),
                ("timeout_seconds", models.IntegerField(null=True)),
                ("enabled", models.BooleanField()),
                ("next_run_at", models.DateTimeField()),
                ("last_run_at", models.DateTimeField(null=True)),
                ("last_job_id", models.UUIDField(null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
            ],
            options={
                "db_table": 'runledger"."schedules',
                "ordering": ["name"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="WorkflowRun",
            fields=[
                ("id", models.UUIDField(primary_key=True, serialize=False)),
                ("name", models.TextField()),
                ("idempotency_key", models.TextField(null=True)),
                ("input", models.JSONField()),
                (
                    "status",
                    models.TextField(
                        choices=[
                            ("running", "running"),
                            ("waiting", "waiting"),
                            ("succeeded", "succeeded"),
                            ("completed_with_errors", "completed with errors"),
                            ("cancelled", "cancelled"),
                        ]
                    ),
                ),
                ("result_step", models.TextField(null=True)),
                ("result", models.JSONField(null=True)),
                ("steps_total", models.IntegerField()),
                ("steps_open", models.IntegerField()),
                ("steps_active", models.IntegerField()),
                ("steps_unsuccessful", models.IntegerField()),
                ("cancel_reason", models.TextField(null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "workflow run",
                "db_table": 'runledger"."workflow_runs',
                "ordering": ["-created_at"],
                "managed": False,
            },
        ),
        migrations.CreateModel(
            name="WorkflowStepRun",
            fields=[
                ("id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("step_key", models.TextField()),
                ("kind", models.TextField(choices=[("job", "job"), ("external", "external")])),
                ("job_type", models.TextField(null=True)),
                ("queue", models.TextField(null=True)),
                ("priority", models.SmallIntegerField(null=True)),
                ("max_attempts", models.IntegerField(null=True)),
                ("timeout_seconds", models.IntegerField(null=True)),
                ("payload", models.JSONField(null=True)),
                (
                    "status",
                    models.TextField(
                        choices=[
                            ("blocked", "blocked"),
                            ("queued", "queued"),
                            ("running", "running"),
                            ("waiting", "waiting"),
                            ("succeeded", "succeeded"),
                            ("failed", "failed"),
                            ("cancelled", "cancelled"),
                        ]
                    ),
                ),
                ("deps_total", models.IntegerField()),
                ("deps_pending", models.IntegerField()),
                ("output", models.JSONField(null=True)),
                ("error", models.TextField(null=True)),
                ("posted_at", models.DateTimeField(null=True)),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(null=True)),
            ],
            options={
                "verbose_name": "workflow step",
                "db_table": 'runledger"."workflow_step_runs',
                "ordering": ["workflow_run_id", "id"],
                "managed": False,
            },
        ),
    ]
