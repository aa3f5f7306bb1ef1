"""The runtime's one stream of lifecycle events: every committed transition the runtime makes
is emitted here once, and hooks (and whatever else subscribes: logs, metrics, spans) read it.

Beside the transitions, the stream carries two notices of the runtime's own that are no
transition and that hooks never see: lost leases (``LostLease``) and what the heartbeat learnt
of this runtime's ``runledger.workers`` row (``WorkerSeen``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Literal

import attrs

from runledger.core.status import AttemptOutcome, EventKind, JobStatus
from runledger.postgres.attempts import AttemptResult, ClaimedJob, Expired, FinishReport
from runledger.runtime.hooks import LifecycleEvent
from runledger.runtime.inflight import InFlight

_logger = logging.getLogger("runledger.events")

Subscriber = Callable[[list[LifecycleEvent]], object]


@attrs.frozen(kw_only=True)
class LostLease:
    """A lease taken from the attempt that held it before its outcome was written.

    ``found_by`` is ``heartbeat`` (this runtime's renewal matched no row: the attempt was
    taken back, cancelled or claimed again under another lease) or ``reaper`` (this runtime's
    reaper took back an expired lease, of any worker). ``mine`` says the attempt was this
    runtime's and that this is the first this runtime learns of it: each of its attempts is
    reported ``mine`` once, by whichever of the two saw it first (``InFlightTable.mark_lost``
    decides). ``status`` is the job's status when the heartbeat found the lease gone (None
    when the job is gone, or for the reaper).
    """

    job_id: uuid.UUID
    lease_token: uuid.UUID
    job_type: str
    queue: str | None
    attempt: int
    max_attempts: int | None = None
    workflow_run_id: uuid.UUID | None = None
    step_key: str | None = None
    found_by: Literal["heartbeat", "reaper"]
    mine: bool
    status: str | None = None


@attrs.frozen(kw_only=True)
class WorkerSeen:
    """The heartbeat marked this runtime's ``runledger.workers`` row seen (or failed to).

    ``oldest`` is true when the row is the oldest live one (by ``started_at``, then id): that
    runtime alone reads the queue depth for its metrics. False when the touch failed.
    """

    worker_id: str
    oldest: bool


class EventStream:
    """Fans each batch of events out to its subscribers, in the order they subscribed.

    A subscriber that raises is logged and skipped; the others still get the batch.
    ``subscribe`` is not thread-safe (do it before the runtime starts); ``emit``, ``wants``,
    ``lost`` and ``seen`` are. A subscriber that also has a ``lost_leases(list[LostLease])``
    or a ``worker_seen(WorkerSeen)`` method gets those notices too (hooks do not).

    A subscriber may state what it wants with a ``wants(kind: EventKind) -> bool`` method
    (one without it wants every event); the runtime builds an event only if ``wants`` says
    some subscriber wants its kind, and every subscriber gets each event that is built.
    ``wants`` asks the subscribers afresh on every call (a dictionary lookup for hooks, a
    cached ``Logger.isEnabledFor`` for the job log), so a hook registered or a log level
    changed while the runtime runs applies from the next event on; nothing is cached here.
    """

    def __init__(self, subscribers: Sequence[Subscriber] = ()) -> None:
        self._subscribers: list[Subscriber] = []
        # Each subscriber's ``wants``, or None for one that wants everything.
        self._wants: list[Callable[[EventKind], bool] | None] = []
        for subscriber in subscribers:
            self.subscribe(subscriber)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Have ``subscriber`` called with every batch emitted from now on."""
        self._subscribers.append(subscriber)
        self._wants.append(getattr(subscriber, "wants", None))

    def wants(self, kind: EventKind) -> bool:
        """True if some subscriber wants events of ``kind`` (asked now, not cached); a
        subscriber whose ``wants`` raises is taken to want it. Thread-safe, never raises."""
        for wants in self._wants:
            if wants is None:
                return True
            try:
                if wants(kind):
                    return True
            except Exception:
                _logger.exception("event subscriber's wants %r failed; taken as yes", wants)
                return True
        return False

    def emit(self, events: list[LifecycleEvent]) -> None:
        """Hand ``events`` to every subscriber; never raises."""
        if not events:
            return
        for subscriber in self._subscribers:
            try:
                subscriber(events)
            except Exception:
                _logger.exception("event subscriber %r failed; ignored", subscriber)

    def lost(self, leases: list[LostLease]) -> None:
        """Hand ``leases`` to the subscribers that take lost leases; never raises."""
        if leases:
            self._notify("lost_leases", leases)

    def seen(self, seen: WorkerSeen) -> None:
        """Hand ``seen`` to the subscribers that take it; never raises."""
        self._notify("worker_seen", seen)

    def _notify(self, method_name: str, notice: object) -> None:
        for subscriber in self._subscribers:
            method = getattr(subscriber, method_name, None)
            if method is None:
                continue
            try:
                method(notice)
            except Exception:
                _logger.exception(
                    "event subscriber %r failed on %s; ignored", subscriber, method_name
                )


_OUTCOME_KINDS: Mapping[JobStatus, EventKind] = {
    JobStatus.SUCCEEDED: EventKind.JOB_SUCCEEDED,
    JobStatus.QUEUED: EventKind.JOB_RETRYING,
    JobStatus.FAILED: EventKind.JOB_FAILED,
}
"""The event of a written outcome by the job's status after it."""


def _everything(kind: EventKind) -> bool:
    return True


def report_events(
    report: FinishReport,
    results: dict[uuid.UUID, AttemptResult],
    flights: Mapping[uuid.UUID, InFlight] | None = None,
    reaped: Mapping[uuid.UUID, Expired] | None = None,
    *,
    wants: Callable[[EventKind], bool] = _everything,
) -> list[LifecycleEvent]:
    """The events of a written ``finish`` (``results``, ``flights`` and ``reaped`` by lease
    token): jobs, then steps, then runs, only of the kinds ``wants`` (an
    ``EventStream.wants``, asked once per kind) says are wanted. A job's ``flights`` entry
    gives its queue, maximum attempts and duration; a job the reaper took (``reaped``), its
    queue and maximum."""
    kinds = {status: kind for status, kind in _OUTCOME_KINDS.items() if wants(kind)}
    snoozed = EventKind.JOB_SNOOZED if wants(EventKind.JOB_SNOOZED) else None
    events: list[LifecycleEvent] = []
    if kinds or snoozed is not None:
        events.extend(_job_events(report, results, kinds, snoozed, flights=flights, reaped=reaped))
    if report.workflow.steps or report.workflow.runs:
        events.extend(workflow_events(report, wants=wants))
    return events


def _job_events(
    report: FinishReport,
    results: dict[uuid.UUID, AttemptResult],
    kinds: Mapping[JobStatus, EventKind],
    snoozed: EventKind | None,
    *,
    flights: Mapping[uuid.UUID, InFlight] | None,
    reaped: Mapping[uuid.UUID, Expired] | None,
) -> Iterator[LifecycleEvent]:
    for done in report.finished:
        result = results.get(done.lease_token)
        if result is not None and result.outcome is AttemptOutcome.RELEASED:
            continue
        attempt = done.attempt
        if result is not None and result.outcome is AttemptOutcome.SNOOZED:
            # the ledger's count went back by one; the event names the attempt that ran
            kind, attempt = snoozed, done.attempt + 1
        else:
            kind = kinds.get(done.status)
        if kind is None:
            continue
        error = None
        if result is not None and result.error_type is not None:
            error = f"{result.error_type}: {result.error_message}"
        flight = flights.get(done.lease_token) if flights is not None else None
        expired = reaped.get(done.lease_token) if reaped is not None else None
        queue, max_attempts = None, None
        if flight is not None:
            queue, max_attempts = flight.job.queue, flight.job.max_attempts
        elif expired is not None:
            queue, max_attempts = expired.queue, expired.max_attempts
        yield LifecycleEvent(
            kind=kind, job_id=done.job_id, job_type=done.job_type, attempt=attempt,
            workflow_run_id=done.workflow_run_id, step_key=done.step_key, error=error,
            retry_at=done.run_at if done.status is JobStatus.QUEUED else None,
            output=result.output if result is not None else None,
            queue=queue, max_attempts=max_attempts,
            duration=flight.duration if flight is not None else None,
            traceback=result.traceback if result is not None and error else None,
        )  # fmt: skip


def workflow_events(
    report: FinishReport, *, wants: Callable[[EventKind], bool] = _everything
) -> list[LifecycleEvent]:
    """The events of step and run transitions in a ``finish``, of the kinds ``wants`` (asked
    once per kind)."""
    asked: dict[EventKind, bool] = {}

    def wanted(kind: EventKind) -> bool:
        answer = asked.get(kind)
        if answer is None:
            answer = asked[kind] = wants(kind)
        return answer

    events = []
    for change in report.workflow.steps:
        kind = EventKind(f"step.{change.status}")
        if wanted(kind):
            events.append(
                LifecycleEvent(
                    kind=kind,
                    workflow_run_id=change.run_id,
                    step_key=change.step_key,
                    job_id=change.job_id,
                )
            )
    for run in report.workflow.runs:
        kind = EventKind("run.resumed" if run.status == "running" else f"run.{run.status}")
        if wanted(kind):
            events.append(LifecycleEvent(kind=kind, workflow_run_id=run.run_id))
    return events


def started_event(job: ClaimedJob) -> LifecycleEvent:
    """The ``job.started`` event of an attempt whose handler starts."""
    return LifecycleEvent(
        kind=EventKind.JOB_STARTED,
        job_id=job.id,
        job_type=job.job_type,
        attempt=job.attempt,
        workflow_run_id=job.workflow_run_id,
        step_key=job.step_key,
        queue=job.queue,
        max_attempts=job.max_attempts,
        queue_wait=None
        if job.run_at is None
        else max((job.started_at - job.run_at).total_seconds(), 0.0),
    )


def lost_lease(
    flight: InFlight, *, found_by: Literal["heartbeat", "reaper"], status: str | None = None
) -> LostLease:
    """The ``LostLease`` of this runtime's attempt ``flight`` (``mine``)."""
    job = flight.job
    return LostLease(
        job_id=job.id,
        lease_token=job.lease_token,
        job_type=job.job_type,
        queue=job.queue,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        workflow_run_id=job.workflow_run_id,
        step_key=job.step_key,
        found_by=found_by,
        mine=True,
        status=status,
    )
