"""runledger: durable jobs and workflow DAGs on PostgreSQL, enqueued in your own transaction.

The public API. Errors live in ``runledger.errors``; statuses in ``runledger.core.status``.
"""

from runledger import errors
from runledger.core.job import Job
from runledger.core.retention import Retention
from runledger.core.retry import Fail, Retry, RetryPolicy, Snooze
from runledger.core.schedule import ScheduleSpec
from runledger.core.status import (
    AttemptOutcome,
    EventKind,
    JobStatus,
    ReleaseMode,
    RunStatus,
    StepKind,
    StepStatus,
)
from runledger.core.unique import Unique
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
from runledger.postgres.cancellation import cancel_job, cancel_workflow, requeue
from runledger.postgres.external import complete_external_step, fail_external_step
from runledger.postgres.queues import (
    QueueSettings,
    list_queue_settings,
    pause_queue,
    queue_settings,
    resume_queue,
    set_queue_limits,
)
from runledger.postgres.records import (
    AttemptRecord,
    EdgeRecord,
    EventRecord,
    JobRecord,
    StepRecord,
    WorkflowRunRecord,
)
from runledger.postgres.rerun import retry_workflow
from runledger.postgres.schedules import (
    ScheduleRecord,
    delete_schedule,
    list_schedules,
    pause_schedule,
    resume_schedule,
    upsert_schedule,
)
from runledger.runtime import JobContext, LifecycleEvent, Registry, Runtime, wait_for_run

__version__ = "0.1.0.dev0"

__all__ = [
    "NOTIFY_CHANNEL",
    "AttemptOutcome",
    "AttemptRecord",
    "Dependency",
    "EdgeRecord",
    "EventKind",
    "EventRecord",
    "Fail",
    "Job",
    "JobContext",
    "JobRecord",
    "JobStatus",
    "LifecycleEvent",
    "QueueSettings",
    "Registry",
    "ReleaseMode",
    "Retention",
    "Retry",
    "RetryPolicy",
    "RunStatus",
    "Runtime",
    "ScheduleRecord",
    "ScheduleSpec",
    "Snooze",
    "StepKind",
    "StepRecord",
    "StepSpec",
    "StepStatus",
    "Store",
    "Unique",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowRunRecord",
    "__version__",
    "cancel_job",
    "cancel_workflow",
    "check_schema",
    "complete_external_step",
    "delete_schedule",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "errors",
    "fail_external_step",
    "get_job",
    "get_workflow_run",
    "list_attempts",
    "list_events",
    "list_jobs",
    "list_queue_settings",
    "list_schedules",
    "migrate",
    "pause_queue",
    "pause_schedule",
    "queue_settings",
    "requeue",
    "resume_queue",
    "resume_schedule",
    "retry_workflow",
    "schema_version",
    "set_queue_limits",
    "upsert_schedule",
    "wait_for_run",
]
