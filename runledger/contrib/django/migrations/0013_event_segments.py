"""Apply runledger's SQL migration 0012 (the events in segments, dropped a period at a time)
on ``manage.py migrate``.

Like 0001, not atomic: each SQL migration commits on its own under runledger's advisory lock.
"""

from typing import ClassVar

from django.db import migrations
from django.db.migrations.operations.base import Operation

from runledger.contrib.django.operations import InstallSchema


class Migration(migrations.Migration):
    atomic = False

    dependencies: ClassVar[list[tuple[str, str]]] = [("runledger", "0012_queued_keys")]

    operations: ClassVar[list[Operation]] = [InstallSchema()]
