"""Apply runledger's SQL migration 0009 (concurrency keys, queue limits, paused queues) on
``manage.py migrate``.

Like 0001, not atomic: each SQL migration commits on its own under runledger's advisory lock.
"""

from typing import ClassVar

from django.db import migrations
from django.db.migrations.operations.base import Operation

from runledger.contrib.django.operations import InstallSchema


class Migration(migrations.Migration):
    atomic = False

    dependencies: ClassVar[list[tuple[str, str]]] = [("runledger", "0008_unique_retry")]

    operations: ClassVar[list[Operation]] = [InstallSchema()]
