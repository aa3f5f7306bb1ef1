"""Apply runledger's SQL migration 0011 (the claim looks for flow control before it pays for
it) on ``manage.py migrate``.

Like 0001, not atomic: each SQL migration commits on its own under runledger's advisory lock.
"""

from typing import ClassVar

from django.db import migrations
from django.db.migrations.operations.base import Operation

from runledger.contrib.django.operations import InstallSchema


class Migration(migrations.Migration):
    atomic = False

    dependencies: ClassVar[list[tuple[str, str]]] = [("runledger", "0011_cheap_prune")]

    operations: ClassVar[list[Operation]] = [InstallSchema()]
