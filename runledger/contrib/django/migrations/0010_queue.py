"""The state of the read-only ``Queue`` model over ``runledger.queues`` (installed by SQL
migration 0009 through ``0009_flow_control``). Unmanaged: this writes nothing."""

from typing import ClassVar

from django.db import migrations, models
from django.db.migrations.operations.base import Operation


class Migration(migrations.Migration):
    dependencies: ClassVar[list[tuple[str, str]]] = [("runledger", "0009_flow_control")]

    operations: ClassVar[list[Operation]] = [
        migrations.CreateModel(
            name="Queue",
            fields=[
                ("queue", models.TextField(primary_key=True, serialize=False)),
                ("paused", models.BooleanField()),
                ("paused_at", models.DateTimeField(null=True)),
                ("paused_by", models.TextField(null=True)),
                ("concurrency", models.IntegerField(blank=True, null=True)),
                ("rate", models.IntegerField(blank=True, null=True)),
                ("per_seconds", models.FloatField(blank=True, null=True)),
                ("updated_at", models.DateTimeField()),
            ],
            options={
                "db_table": 'runledger"."queues',
                "ordering": ["queue"],
                "managed": False,
            },
        ),
    ]
