"""runledger: durable jobs and workflow DAGs on PostgreSQL, enqueued in your own transaction.

The public API. Errors live in ``runledger.errors``; statuses in ``runledger.core.status``.
"""

from runledger import errors
from runledger.core.job import Job
from runledger.core.status import (
    AttemptOutcome,
    EventKind,
    JobStatus,
    ReleaseMode,
    RunStatus,
    StepKind,
    StepStatus,
)
from runledger.core.workflow import Dependency, StepSpec, Workflow, WorkflowBuilder
from runledger.postgres import (
    NOTIFY_CHANNEL,
    Store,
    check_schema,
    enqueue,
    enqueue_many,
    enqueue_workflow,
    get_job,
    get_workflow_run,
    list_attempts,
    list_events,
    list_jobs,
    migrate,
    schema_version,
)
from runledger.postgres.records import (
    AttemptRecord,
    EdgeRecord,
    EventRecord,
    JobRecord,
    StepRecord,
    WorkflowRunRecord,
)
from runledger.runtime import Registry

__version__ = "0.1.0.dev0"

__all__ = [
    "NOTIFY_CHANNEL",
    "AttemptOutcome",
    "AttemptRecord",
    "Dependency",
    "EdgeRecord",
    "EventKind",
    "EventRecord",
    "Job",
    "JobRecord",
    "JobStatus",
    "Registry",
    "ReleaseMode",
    "RunStatus",
    "StepKind",
    "StepRecord",
    "StepSpec",
    "StepStatus",
    "Store",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowRunRecord",
    "__version__",
    "check_schema",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "errors",
    "get_job",
    "get_workflow_run",
    "list_attempts",
    "list_events",
    "list_jobs",
    "migrate",
    "schema_version",
]
