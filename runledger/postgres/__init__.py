"""The store: migrations, enqueue, reads. The only layer that speaks SQL."""

from runledger.postgres.enqueue import NOTIFY_CHANNEL, enqueue, enqueue_many, enqueue_workflow
from runledger.postgres.migrate import check_schema, migrate, schema_version
from runledger.postgres.reads import (
    get_job,
    get_workflow_run,
    list_attempts,
    list_events,
    list_jobs,
)
from runledger.postgres.store import Store

__all__ = [
    "NOTIFY_CHANNEL",
    "Store",
    "check_schema",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "get_job",
    "get_workflow_run",
    "list_attempts",
    "list_events",
    "list_jobs",
    "migrate",
    "schema_version",
]
