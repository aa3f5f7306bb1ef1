"""Workflow DAGs: the fluent ``WorkflowBuilder`` and the validated ``Workflow`` it builds.

A workflow is a set of steps keyed by name. A job step runs a job of its type; an external step
waits until ``complete_external_step()`` (or ``fail_external_step()``) is called for it.
``after(*keys)`` makes a step wait for those prerequisites to succeed (if one fails or is
cancelled, the step is cancelled, and that cascades); ``after_terminal(*keys)`` waits for them
to finish whatever the outcome.

Validation happens in ``Workflow.__attrs_post_init__``, so ``build()`` and direct construction
alike cannot produce an invalid workflow; each mistake raises its own ``WorkflowBuildError``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Any, Self

import attrs

from runledger.core import job as jobopts
from runledger.core.errors import (
    BlankStepKey,
    BlankWorkflowName,
    BuilderMisuse,
    CycleDetected,
    DuplicateDependency,
    DuplicateStepKey,
    EmptyWorkflow,
    ExternalStepWithJobSettings,
    MissingJobType,
    SelfDependency,
    UnknownDependency,
    UnknownResultStep,
    WorkflowBuildError,
)
from runledger.core.limits import check_concurrency
from runledger.core.payload import JsonValue, check_json
from runledger.core.status import ReleaseMode, StepKind


@attrs.frozen(kw_only=True)
class Dependency:
    """An edge: the step waits for ``prerequisite``, released as ``mode`` says."""

    prerequisite: str
    mode: ReleaseMode = attrs.field(default=ReleaseMode.ON_SUCCESS, converter=ReleaseMode)


@attrs.frozen(kw_only=True)
class StepSpec:
    """One step of a workflow, as written; ``Workflow`` validates it with its siblings.

    Job options left as None take the handler's defaults (queue: ``"default"``).
    """

    key: str
    kind: StepKind = attrs.field(default=StepKind.JOB, converter=StepKind)
    job_type: str | None = None
    payload: JsonValue = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    timeout_seconds: int | None = None
    dependencies: tuple[Dependency, ...] = ()
    concurrency_key: str | None = None
    concurrency_limit: int | None = None

    @property
    def prerequisites(self) -> tuple[str, ...]:
        """The keys this step waits for, in the order given."""
        return tuple(dep.prerequisite for dep in self.dependencies)

    def job_settings(self) -> tuple[str, ...]:
        """The names of job-only settings given to this step, sorted."""
        given = {
            "job_type": self.job_type,
            "payload": self.payload,
            "queue": self.queue,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
            "concurrency_key": self.concurrency_key,
            "concurrency_limit": self.concurrency_limit,
        }
        return tuple(sorted(name for name, value in given.items() if value is not None))


@attrs.frozen(kw_only=True)
class Workflow:
    """A validated workflow, ready for ``runledger.enqueue_workflow``.

    Attributes:
        name: the workflow's name; with ``idempotency_key`` it identifies a run.
        steps: the steps in the order they were added.
        input: plain JSON that every step sees as ``ctx.workflow_input``.
        idempotency_key: the same (name, key) enqueued again returns the existing run.
        result_step: the step whose output becomes the run's ``result``.
        order: the step keys in a topological order (prerequisites first; ties keep the
            order the steps were added).

    Raises:
        WorkflowBuildError: a subclass naming the first mistake found.
    """

    name: str
    steps: tuple[StepSpec, ...]
    input: JsonValue = attrs.field(factory=dict)
    idempotency_key: str | None = None
    result_step: str | None = None
    order: tuple[str, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "order", _validate(self))

    def step(self, key: str) -> StepSpec:
        """The step with this key; raises ``KeyError`` if there is none."""
        for spec in self.steps:
            if spec.key == key:
                return spec
        raise KeyError(key)

    def request(self) -> dict[str, Any]:
        """The workflow as plain JSON: what idempotency compares."""
        return {
            "name": self.name,
            "input": self.input,
            "result_step": self.result_step,
            "steps": [
                {
                    "key": s.key,
                    "kind": str(s.kind),
                    "job_type": s.job_type,
                    "payload": s.payload,
                    "queue": s.queue,
                    "priority": s.priority,
                    "max_attempts": s.max_attempts,
                    "timeout_seconds": s.timeout_seconds,
                    "dependencies": [[d.prerequisite, str(d.mode)] for d in s.dependencies],
                    # only when given: runs enqueued before keys existed keep their digest
                    **jobopts.concurrency_request_part(s.concurrency_key, s.concurrency_limit),
                }
                for s in self.steps
            ],
        }

    def fingerprint(self) -> str:
        """A digest of ``request()``; equal for equal workflows."""
        return jobopts.fingerprint(self.request())


def _validate(workflow: Workflow) -> tuple[str, ...]:
    try:
        return _check(workflow)
    except WorkflowBuildError as err:
        # Option errors shared with plain jobs are raised without the workflow's name.
        if not err.workflow_name and isinstance(workflow.name, str):
            err.workflow_name = workflow.name
        raise


def _check(workflow: Workflow) -> tuple[str, ...]:
    name = workflow.name
    if not isinstance(name, str) or not name.strip():
        raise BlankWorkflowName(workflow_name=str(name))
    jobopts.check_text("name", name)
    jobopts.check_idempotency_key(workflow.idempotency_key)
    check_json(workflow.input, root="$input")
    if not workflow.steps:
        raise EmptyWorkflow(workflow_name=name)

    seen: set[str] = set()
    for index, spec in enumerate(workflow.steps):
        if not isinstance(spec.key, str) or not spec.key.strip():
            raise BlankStepKey(workflow_name=name, index=index)
        jobopts.check_text("step_key", spec.key)
        if spec.key in seen:
            raise DuplicateStepKey(workflow_name=name, step_key=spec.key)
        seen.add(spec.key)

    for spec in workflow.steps:
        _validate_step(name, spec)

    for spec in workflow.steps:
        prerequisites: set[str] = set()
        for dep in spec.dependencies:
            if dep.prerequisite == spec.key:
                raise SelfDependency(workflow_name=name, step_key=spec.key)
            if dep.prerequisite in prerequisites:
                raise DuplicateDependency(
                    workflow_name=name, step_key=spec.key, prerequisite=dep.prerequisite
                )
            if dep.prerequisite not in seen:
                raise UnknownDependency(
                    workflow_name=name, step_key=spec.key, prerequisite=dep.prerequisite
                )
            prerequisites.add(dep.prerequisite)

    order = _topological_order(workflow.steps)
    if len(order) < len(workflow.steps):
        raise CycleDetected(workflow_name=name, step_keys=_find_cycle(workflow.steps, order))

    if workflow.result_step is not None and workflow.result_step not in seen:
        raise UnknownResultStep(workflow_name=name, step_key=workflow.result_step)
    return order


def _validate_step(name: str, spec: StepSpec) -> None:
    key = spec.key
    if spec.kind is StepKind.EXTERNAL:
        settings = spec.job_settings()
        if settings:
            raise ExternalStepWithJobSettings(workflow_name=name, step_key=key, settings=settings)
        return
    if spec.job_type is None:
        raise MissingJobType(workflow_name=name, step_key=key)
    jobopts.check_job_type(spec.job_type, step_key=key)
    if spec.queue is not None:
        jobopts.check_queue(spec.queue, step_key=key)
    if spec.priority is not None:
        jobopts.check_priority(spec.priority, step_key=key)
    jobopts.check_max_attempts(spec.max_attempts, step_key=key)
    jobopts.check_timeout(spec.timeout_seconds, step_key=key)
    check_concurrency(spec.concurrency_key, spec.concurrency_limit, step_key=key)
    check_json(spec.payload, step_key=key)


def _topological_order(steps: tuple[StepSpec, ...]) -> tuple[str, ...]:
    """Kahn's algorithm; among ready steps the earliest added goes first."""
    index = {spec.key: i for i, spec in enumerate(steps)}
    waiting_on = {spec.key: len(spec.dependencies) for spec in steps}
    dependents: dict[str, list[str]] = {spec.key: [] for spec in steps}
    for spec in steps:
        for dep in spec.dependencies:
            dependents[dep.prerequisite].append(spec.key)
    ready = [index[key] for key, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        key = steps[heapq.heappop(ready)].key
        order.append(key)
        for dependent in dependents[key]:
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, index[dependent])
    return tuple(order)


def _find_cycle(steps: tuple[StepSpec, ...], ordered: tuple[str, ...]) -> tuple[str, ...]:
    """A cycle among the steps Kahn's algorithm could not order.

    Each such step has a prerequisite that is also unordered, so walking prerequisites from
    any of them must revisit a step; the revisited stretch is a cycle.
    """
    done = set(ordered)
    by_key = {spec.key: spec for spec in steps}
    start = next(spec.key for spec in steps if spec.key not in done)
    walk: list[str] = []
    position: dict[str, int] = {}
    key = start
    while key not in position:
        position[key] = len(walk)
        walk.append(key)
        key = next(p for p in by_key[key].prerequisites if p not in done)
    cycle = walk[position[key] :]
    cycle.reverse()  # now each key depends on the one before it
    first = min(range(len(cycle)), key=lambda i: list(by_key).index(cycle[i]))
    return tuple(cycle[first:] + cycle[:first])


@attrs.define
class _StepDraft:
    key: str
    kind: StepKind = StepKind.JOB
    job_type: str | None = None
    payload: JsonValue = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    timeout_seconds: int | None = None
    dependencies: list[Dependency] = attrs.field(factory=list)
    concurrency_key: str | None = None
    concurrency_limit: int | None = None

    def freeze(self) -> StepSpec:
        return StepSpec(
            key=self.key,
            kind=self.kind,
            job_type=self.job_type,
            payload=self.payload,
            queue=self.queue,
            priority=self.priority,
            max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds,
            dependencies=tuple(self.dependencies),
            concurrency_key=self.concurrency_key,
            concurrency_limit=self.concurrency_limit,
        )


def _keys(keys: str | Iterable[str]) -> tuple[str, ...]:
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _flatten(groups: tuple[str | Iterable[str], ...]) -> list[str]:
    return [key for group in groups for key in _keys(group)]


class WorkflowBuilder:
    """Fluent construction of a ``Workflow``; ``build()`` validates.

    Step settings (``job``, ``after``, ``queue``, ...) apply to the step most recently opened
    with ``step(key)``; the same settings can be given as keywords to ``step()``::

        (WorkflowBuilder("invoice.process")
            .input({"invoice_id": "42"})
            .step("fetch").job("invoice.fetch").max_attempts(3)
            .step("charge", job="invoice.charge", after="fetch")
            .step("notify").after("charge").external()
            .build())

    Not thread-safe; build one workflow per builder.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._input: JsonValue = {}
        self._idempotency_key: str | None = None
        self._result_step: str | None = None
        self._steps: list[_StepDraft] = []

    # --- workflow settings ---------------------------------------------------------------

    def input(self, value: Mapping[str, Any] | JsonValue) -> Self:
        """Set the run's input, seen by every step as ``ctx.workflow_input``."""
        self._input = dict(value) if isinstance(value, Mapping) else value
        return self

    def idempotency_key(self, key: str | None) -> Self:
        """Make enqueueing this workflow again with the same key return the existing run."""
        self._idempotency_key = key
        return self

    def result_step(self, key: str) -> Self:
        """Name the step whose output becomes the run's ``result``."""
        self._result_step = key
        return self

    # --- steps --------------------------------------------------------------------------

    def step(
        self,
        key: str,
        *,
        job: str | None = None,
        after: str | Iterable[str] = (),
        after_terminal: str | Iterable[str] = (),
        external: bool = False,
        payload: JsonValue = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout_seconds: int | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
    ) -> Self:
        """Open a new step; later step settings apply to it until the next ``step()``."""
        draft = _StepDraft(
            key=key,
            kind=StepKind.EXTERNAL if external else StepKind.JOB,
            job_type=job,
            payload=payload,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            timeout_seconds=timeout_seconds,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
        )
        self._steps.append(draft)
        self.after(*_keys(after))
        return self.after_terminal(*_keys(after_terminal))

    def _current(self, method: str) -> _StepDraft:
        if not self._steps:
            raise BuilderMisuse(workflow_name=self._name, method=method)
        return self._steps[-1]

    def job(self, job_type: str) -> Self:
        """Make the current step run a job of ``job_type``."""
        self._current("job").job_type = job_type
        return self

    def external(self) -> Self:
        """Make the current step wait for an external signal instead of running a job."""
        self._current("external").kind = StepKind.EXTERNAL
        return self

    def after(self, *keys: str | Iterable[str]) -> Self:
        """The current step runs once all of ``keys`` have succeeded.

        Takes keys as arguments or as iterables: ``after("a", "b")`` or ``after(["a", "b"])``.
        """
        draft = self._current("after")
        draft.dependencies.extend(Dependency(prerequisite=k) for k in _flatten(keys))
        return self

    def after_terminal(self, *keys: str | Iterable[str]) -> Self:
        """The current step runs once all of ``keys`` have finished, whatever the outcome."""
        draft = self._current("after_terminal")
        draft.dependencies.extend(
            Dependency(prerequisite=k, mode=ReleaseMode.ON_TERMINAL) for k in _flatten(keys)
        )
        return self

    def payload(self, value: JsonValue) -> Self:
        """Set the current step's job payload."""
        self._current("payload").payload = value
        return self

    def queue(self, queue: str) -> Self:
        """Run the current step's job on ``queue``."""
        self._current("queue").queue = queue
        return self

    def priority(self, priority: int) -> Self:
        """Set the current step's job priority (-100..100, higher first)."""
        self._current("priority").priority = priority
        return self

    def max_attempts(self, attempts: int) -> Self:
        """Set how many attempts the current step's job gets."""
        self._current("max_attempts").max_attempts = attempts
        return self

    def timeout_seconds(self, seconds: int) -> Self:
        """Set the time limit of one attempt of the current step's job."""
        self._current("timeout_seconds").timeout_seconds = seconds
        return self

    def concurrency(self, key: str, limit: int | None = None) -> Self:
        """Let the current step's job start only while fewer than ``limit`` (default: its
        handler's, else 1) jobs with ``key`` run (see ``runledger.Job``)."""
        draft = self._current("concurrency")
        draft.concurrency_key, draft.concurrency_limit = key, limit
        return self

    def build(self) -> Workflow:
        """Validate and return the workflow.

        Raises:
            WorkflowBuildError: a subclass naming the first mistake, with its fields.
        """
        return Workflow(
            name=self._name,
            steps=tuple(d.freeze() for d in self._steps),
            input=self._input,
            idempotency_key=self._idempotency_key,
            result_step=self._result_step,
        )
