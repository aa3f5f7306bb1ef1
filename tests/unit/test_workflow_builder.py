"""WorkflowBuilder and Workflow: fluent API, each build error and its fields, order, fingerprint."""

from __future__ import annotations

import datetime
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from runledger.core.errors import (
    BlankIdempotencyKey,
    BlankJobType,
    BlankQueue,
    BlankStepKey,
    BlankWorkflowName,
    BuilderMisuse,
    CycleDetected,
    DuplicateDependency,
    DuplicateStepKey,
    EmptyWorkflow,
    ExternalStepWithJobSettings,
    InvalidMaxAttempts,
    InvalidTimeout,
    MissingJobType,
    PayloadNotSerializable,
    PriorityOutOfRange,
    RunledgerError,
    SelfDependency,
    UnknownDependency,
    UnknownResultStep,
    WorkflowBuildError,
)
from runledger.core.job import MAX_INT
from runledger.core.status import ReleaseMode, StepKind
from runledger.core.workflow import Dependency, StepSpec, Workflow, WorkflowBuilder

INVOICE_ID = uuid.UUID("6f1c1f54-8a5e-4b4e-9a43-0d3c1b0e7f21")


def invoice_workflow() -> Workflow:
    """The invoice workflow of docs/workflows.md ("Build and enqueue"), without its result step."""
    invoice_id = INVOICE_ID
    # fmt: off
    workflow = (
        WorkflowBuilder("invoice.process")
        .idempotency_key(str(invoice_id))
        .input({"invoice_id": str(invoice_id)})
        .step("fetch").job("invoice.fetch").max_attempts(3).timeout_seconds(30)
        .step("validate").after("fetch").job("invoice.validate")
        .step("charge").after("validate").job("invoice.charge").max_attempts(5).timeout_seconds(15)
        .step("notify").after("charge").external()
        .build()
    )
    # fmt: on
    return workflow


def build_error(builder: WorkflowBuilder) -> WorkflowBuildError:
    """Build, expecting a WorkflowBuildError that is also a ValueError and a RunledgerError."""
    with pytest.raises(WorkflowBuildError) as info:
        builder.build()
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, RunledgerError)
    return error


# --- the fluent API ---------------------------------------------------------------------------


def test_invoice_workflow_from_the_design() -> None:
    workflow = invoice_workflow()

    assert workflow.name == "invoice.process"
    assert workflow.idempotency_key == str(INVOICE_ID)
    assert workflow.input == {"invoice_id": str(INVOICE_ID)}
    assert workflow.result_step is None
    assert [s.key for s in workflow.steps] == ["fetch", "validate", "charge", "notify"]
    assert workflow.order == ("fetch", "validate", "charge", "notify")

    assert workflow.step("fetch") == StepSpec(
        key="fetch", job_type="invoice.fetch", max_attempts=3, timeout_seconds=30
    )
    assert workflow.step("validate") == StepSpec(
        key="validate",
        job_type="invoice.validate",
        dependencies=(Dependency(prerequisite="fetch", mode=ReleaseMode.ON_SUCCESS),),
    )
    assert workflow.step("charge") == StepSpec(
        key="charge",
        job_type="invoice.charge",
        max_attempts=5,
        timeout_seconds=15,
        dependencies=(Dependency(prerequisite="validate"),),
    )
    notify = workflow.step("notify")
    assert notify.kind is StepKind.EXTERNAL
    assert notify.job_type is None
    assert notify.job_settings() == ()
    assert notify.prerequisites == ("charge",)
    assert notify.dependencies[0].mode is ReleaseMode.ON_SUCCESS
    assert workflow.step("fetch").kind is StepKind.JOB


def test_step_keywords_build_the_same_workflow_as_chained_calls() -> None:
    chained = (
        WorkflowBuilder("invoice.process")
        .input({"invoice_id": "42"})
        .step("fetch")
        .job("invoice.fetch")
        .payload({"source": "erp"})
        .queue("io")
        .priority(7)
        .max_attempts(3)
        .timeout_seconds(30)
        .step("validate")
        .after("fetch")
        .job("invoice.validate")
        .step("charge")
        .after("validate")
        .after_terminal("fetch")
        .job("invoice.charge")
        .step("notify")
        .after("charge", "validate")
        .external()
        .build()
    )
    keywords = (
        WorkflowBuilder("invoice.process")
        .input({"invoice_id": "42"})
        .step(
            "fetch",
            job="invoice.fetch",
            payload={"source": "erp"},
            queue="io",
            priority=7,
            max_attempts=3,
            timeout_seconds=30,
        )
        .step("validate", job="invoice.validate", after="fetch")
        .step("charge", job="invoice.charge", after=["validate"], after_terminal="fetch")
        .step("notify", after=("charge", "validate"), external=True)
        .build()
    )

    assert keywords == chained
    assert keywords.fingerprint() == chained.fingerprint()
    fetch = keywords.step("fetch")
    assert (fetch.payload, fetch.queue, fetch.priority) == ({"source": "erp"}, "io", 7)
    assert (fetch.max_attempts, fetch.timeout_seconds) == (3, 30)
    assert keywords.step("charge").dependencies == (
        Dependency(prerequisite="validate", mode=ReleaseMode.ON_SUCCESS),
        Dependency(prerequisite="fetch", mode=ReleaseMode.ON_TERMINAL),
    )
    assert keywords.step("notify").kind is StepKind.EXTERNAL
    assert keywords.step("notify").prerequisites == ("charge", "validate")


def test_after_terminal_creates_on_terminal_dependencies() -> None:
    workflow = (
        WorkflowBuilder("w")
        .step("a")
        .job("t")
        .step("b")
        .job("t")
        .step("c")
        .job("t")
        .step("cleanup")
        .job("t")
        .after("a")
        .after_terminal("b", "c")
        .build()
    )

    assert workflow.step("cleanup").dependencies == (
        Dependency(prerequisite="a", mode=ReleaseMode.ON_SUCCESS),
        Dependency(prerequisite="b", mode=ReleaseMode.ON_TERMINAL),
        Dependency(prerequisite="c", mode=ReleaseMode.ON_TERMINAL),
    )
    assert workflow.step("cleanup").prerequisites == ("a", "b", "c")
    assert workflow.order[-1] == "cleanup"


def test_result_step_and_input_are_kept() -> None:
    source = {"k": [1, 2.5, None, True, "s"]}
    workflow = (
        WorkflowBuilder("w")
        .input(types.MappingProxyType(source))
        .result_step("b")
        .step("a")
        .job("t")
        .step("b")
        .job("t")
        .after("a")
        .build()
    )

    assert workflow.result_step == "b"
    assert type(workflow.input) is dict
    assert workflow.input == source


def test_input_defaults_to_an_empty_object() -> None:
    assert WorkflowBuilder("w").step("a").job("t").build().input == {}


def test_workflow_step_lookup_of_unknown_key_raises_key_error() -> None:
    with pytest.raises(KeyError):
        invoice_workflow().step("ship")


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(EmptyWorkflow):
        Workflow(name="w", steps=())
    with pytest.raises(MissingJobType):
        Workflow(name="w", steps=(StepSpec(key="a"),))
    workflow = Workflow(name="w", steps=(StepSpec(key="a", job_type="t"),))
    assert workflow.order == ("a",)


# --- order ------------------------------------------------------------------------------------


def test_order_is_topological_with_ties_in_insertion_order() -> None:
    workflow = (
        WorkflowBuilder("w")
        .step("c")
        .job("t")
        .step("a")
        .job("t")
        .after("c")
        .step("b")
        .job("t")
        .build()
    )
    # After "c", both "a" (added second) and "b" (added third) are ready; "a" goes first.
    assert workflow.order == ("c", "a", "b")


def test_order_puts_prerequisites_first_even_when_added_later() -> None:
    workflow = (
        WorkflowBuilder("w")
        .step("report")
        .job("t")
        .after("left", "right")
        .step("right")
        .job("t")
        .after("root")
        .step("left")
        .job("t")
        .after_terminal("root")
        .step("root")
        .job("t")
        .step("other")
        .job("t")
        .build()
    )
    assert workflow.order == ("root", "right", "left", "report", "other")
    assert [s.key for s in workflow.steps] == ["report", "right", "left", "root", "other"]


def test_order_of_independent_steps_is_insertion_order() -> None:
    keys = ["z", "m", "a", "q"]
    builder = WorkflowBuilder("w")
    for key in keys:
        builder.step(key, job="t")
    assert builder.build().order == tuple(keys)


# --- fingerprint ------------------------------------------------------------------------------


def base_builder(**changes: Any) -> WorkflowBuilder:
    """A small workflow; each keyword replaces one detail of it."""
    options: dict[str, Any] = {
        "name": "w",
        "input": {"n": 1},
        "result_step": "b",
        "a_key": "a",
        "a_job": "t.a",
        "a_payload": {"p": 1},
        "a_queue": "q",
        "a_priority": 1,
        "a_max_attempts": 2,
        "a_timeout": 10,
        "b_after": ("a",),
        "b_after_terminal": (),
        "b_external": False,
        "a_first": True,
    }
    unknown = set(changes) - set(options)
    assert not unknown, unknown
    options.update(changes)
    builder = WorkflowBuilder(options["name"]).input(options["input"])
    builder.result_step(options["result_step"])

    def add_a() -> None:
        builder.step(
            options["a_key"],
            job=options["a_job"],
            payload=options["a_payload"],
            queue=options["a_queue"],
            priority=options["a_priority"],
            max_attempts=options["a_max_attempts"],
            timeout_seconds=options["a_timeout"],
        )

    def add_b() -> None:
        if options["b_external"]:
            builder.step("b", external=True)
        else:
            builder.step("b", job="t.b")
        builder.after(*options["b_after"]).after_terminal(*options["b_after_terminal"])

    if options["a_first"]:
        add_a()
        add_b()
    else:
        add_b()
        add_a()
    return builder


def test_fingerprint_is_equal_for_equal_workflows() -> None:
    first, second = base_builder().build(), base_builder().build()
    assert first is not second
    assert first == second
    assert first.fingerprint() == second.fingerprint()
    assert invoice_workflow().fingerprint() == invoice_workflow().fingerprint()
    assert len(first.fingerprint()) == 64
    int(first.fingerprint(), 16)


def test_fingerprint_ignores_dict_key_order() -> None:
    first = base_builder(input={"x": 1, "y": 2}, a_payload={"p": 1, "q": 2}).build()
    second = base_builder(input={"y": 2, "x": 1}, a_payload={"q": 2, "p": 1}).build()
    assert first.fingerprint() == second.fingerprint()


FINGERPRINT_CHANGES: dict[str, dict[str, Any]] = {
    "name": {"name": "w2"},
    "input": {"input": {"n": 2}},
    "input type": {"input": {"n": 1.5}},
    "result step": {"result_step": "a"},
    "no result step": {"result_step": None},
    "step key": {"a_key": "a2", "b_after": ("a2",)},
    "job type": {"a_job": "t.other"},
    "payload": {"a_payload": {"p": 2}},
    "no payload": {"a_payload": None},
    "empty payload": {"a_payload": {}},
    "queue": {"a_queue": "q2"},
    "default queue": {"a_queue": None},
    "priority": {"a_priority": 2},
    "max attempts": {"a_max_attempts": 3},
    "timeout": {"a_timeout": 11},
    "release mode": {"b_after": (), "b_after_terminal": ("a",)},
    "no dependency": {"b_after": ()},
    "step kind": {"b_external": True},
    "step insertion order": {"a_first": False},
}


def test_fingerprint_changes_when_anything_differs() -> None:
    base = base_builder().build().fingerprint()
    fingerprints = {"base": base}
    for label, changes in FINGERPRINT_CHANGES.items():
        fingerprints[label] = base_builder(**changes).build().fingerprint()
    assert len(set(fingerprints.values())) == len(fingerprints), fingerprints


def test_fingerprint_leaves_out_the_idempotency_key() -> None:
    # The key identifies the run; the fingerprint is what two requests under one key compare.
    keyed = base_builder().idempotency_key("k1").build()
    other = base_builder().idempotency_key("k2").build()
    assert keyed.fingerprint() == other.fingerprint() == base_builder().build().fingerprint()


# --- build errors, one per class ----------------------------------------------------------------


def test_empty_workflow() -> None:
    error = build_error(WorkflowBuilder("invoice.process"))
    assert type(error) is EmptyWorkflow
    assert error.workflow_name == "invoice.process"


@pytest.mark.parametrize("name", ["", "   ", "\t\n"])
def test_blank_workflow_name(name: str) -> None:
    error = build_error(WorkflowBuilder(name).step("a").job("t"))
    assert type(error) is BlankWorkflowName
    assert error.workflow_name == name


@pytest.mark.parametrize(("keys", "index"), [([""], 0), (["a", "b", "  "], 2), (["a", "\t"], 1)])
def test_blank_step_key(keys: list[str], index: int) -> None:
    builder = WorkflowBuilder("w")
    for key in keys:
        builder.step(key).job("t")
    error = build_error(builder)
    assert type(error) is BlankStepKey
    assert error.index == index
    assert error.workflow_name == "w"


def test_duplicate_step_key() -> None:
    error = build_error(
        WorkflowBuilder("w").step("a").job("t").step("b").job("t").step("a").external()
    )
    assert type(error) is DuplicateStepKey
    assert error.step_key == "a"
    assert error.workflow_name == "w"


def test_missing_job_type() -> None:
    error = build_error(WorkflowBuilder("w").step("a").job("t").step("b").after("a"))
    assert type(error) is MissingJobType
    assert error.step_key == "b"
    assert error.workflow_name == "w"


@pytest.mark.parametrize(
    ("builder", "settings"),
    [
        (
            WorkflowBuilder("w").step("n").external().queue("q").payload({}),
            ("payload", "queue"),
        ),
        (WorkflowBuilder("w").step("n").job("t").external(), ("job_type",)),
        (
            WorkflowBuilder("w").step(
                "n", external=True, priority=0, max_attempts=2, timeout_seconds=3, job="t"
            ),
            ("job_type", "max_attempts", "priority", "timeout_seconds"),
        ),
    ],
    ids=["payload-queue", "job-type", "keywords"],
)
def test_external_step_with_job_settings(
    builder: WorkflowBuilder, settings: tuple[str, ...]
) -> None:
    error = build_error(builder)
    assert type(error) is ExternalStepWithJobSettings
    assert error.step_key == "n"
    assert error.settings == settings


@pytest.mark.parametrize("after", ["after", "after_terminal"])
def test_unknown_dependency(after: str) -> None:
    builder = WorkflowBuilder("w").step("a").job("t").step("b").job("t")
    getattr(builder, after)("a", "missing")
    error = build_error(builder)
    assert type(error) is UnknownDependency
    assert error.step_key == "b"
    assert error.prerequisite == "missing"
    assert error.workflow_name == "w"


@pytest.mark.parametrize("after", ["after", "after_terminal"])
def test_self_dependency(after: str) -> None:
    builder = WorkflowBuilder("w").step("a").job("t").step("b").job("t")
    getattr(builder, after)("b")
    error = build_error(builder)
    assert type(error) is SelfDependency
    assert error.step_key == "b"


@pytest.mark.parametrize(
    "add_deps",
    [
        lambda b: b.after("a", "a"),
        lambda b: b.after("a").after("a"),
        lambda b: b.after_terminal("a", "a"),
        lambda b: b.after("a").after_terminal("a"),
        lambda b: b.after_terminal("a").after("a"),
    ],
    ids=["after-twice-in-one-call", "after-twice", "after-terminal-twice", "mixed", "mixed-rev"],
)
def test_duplicate_dependency(add_deps: Callable[[WorkflowBuilder], WorkflowBuilder]) -> None:
    builder = WorkflowBuilder("w").step("a").job("t").step("b").job("t")
    error = build_error(add_deps(builder))
    assert type(error) is DuplicateDependency
    assert error.step_key == "b"
    assert error.prerequisite == "a"


def test_duplicate_dependency_across_step_keywords() -> None:
    builder = (
        WorkflowBuilder("w").step("a").job("t").step("b", job="t", after="a", after_terminal=["a"])
    )
    error = build_error(builder)
    assert type(error) is DuplicateDependency
    assert (error.step_key, error.prerequisite) == ("b", "a")


def assert_is_cycle(workflow_steps: dict[str, tuple[str, ...]], cycle: tuple[str, ...]) -> None:
    """Each key depends on the one before it and the first depends on the last."""
    assert len(cycle) >= 2
    assert len(set(cycle)) == len(cycle)
    for before, key in zip((cycle[-1], *cycle[:-1]), cycle, strict=True):
        assert before in workflow_steps[key], (key, before)


def test_cycle_detected_three_steps() -> None:
    error = build_error(
        WorkflowBuilder("w")
        .step("a")
        .job("t")
        .after("c")
        .step("b")
        .job("t")
        .after("a")
        .step("c")
        .job("t")
        .after("b")
    )
    assert type(error) is CycleDetected
    assert error.workflow_name == "w"
    assert sorted(error.step_keys) == ["a", "b", "c"]
    assert_is_cycle({"a": ("c",), "b": ("a",), "c": ("b",)}, error.step_keys)


def test_cycle_detected_names_only_the_steps_on_the_cycle() -> None:
    deps = {
        "root": (),
        "p": ("root", "q"),
        "q": ("p",),
        "tail": ("q",),
        "side": ("root",),
    }
    builder = WorkflowBuilder("w")
    for key, prerequisites in deps.items():
        builder.step(key, job="t")
        if key == "q":
            builder.after_terminal(*prerequisites)  # the release mode does not matter
        else:
            builder.after(*prerequisites)
    error = build_error(builder)
    assert type(error) is CycleDetected
    assert set(error.step_keys) == {"p", "q"}
    assert_is_cycle(deps, error.step_keys)


@pytest.mark.parametrize(
    ("setting", "error_class"),
    [
        ("max_attempts", InvalidMaxAttempts),
        ("timeout_seconds", InvalidTimeout),
    ],
)
@pytest.mark.parametrize("value", [0, -1, -30, True, False, 1.5, 3.0, "3", MAX_INT + 1])
def test_invalid_max_attempts_and_timeout(
    setting: str, error_class: type[InvalidMaxAttempts | InvalidTimeout], value: Any
) -> None:
    builder = WorkflowBuilder("w").step("a").job("t").step("b").job("t")
    getattr(builder, setting)(value)
    error = build_error(builder)
    assert type(error) is error_class
    assert isinstance(error, InvalidMaxAttempts | InvalidTimeout)
    assert error.step_key == "b"
    assert error.value == value
    assert type(error.value) is type(value)


@pytest.mark.parametrize("setting", ["max_attempts", "timeout_seconds"])
@pytest.mark.parametrize("value", [1, 2, MAX_INT])
def test_valid_max_attempts_and_timeout(setting: str, value: int) -> None:
    workflow = WorkflowBuilder("w").step("a", job="t", **{setting: value}).build()
    assert getattr(workflow.step("a"), setting) == value


@pytest.mark.parametrize("value", [-101, 101, 10**6, True, 1.0, "1"])
def test_priority_out_of_range(value: Any) -> None:
    error = build_error(WorkflowBuilder("w").step("a").job("t").priority(value))
    assert type(error) is PriorityOutOfRange
    assert error.value == value
    assert type(error.value) is type(value)
    assert (error.minimum, error.maximum) == (-100, 100)
    assert error.step_key == "a"


@pytest.mark.parametrize("value", [-100, 0, 100])
def test_priority_bounds_are_accepted(value: int) -> None:
    workflow = WorkflowBuilder("w").step("a").job("t").priority(value).build()
    assert workflow.step("a").priority == value


@pytest.mark.parametrize("queue", ["", "  "])
def test_blank_queue(queue: str) -> None:
    error = build_error(WorkflowBuilder("w").step("a").job("t").step("b").job("t").queue(queue))
    assert type(error) is BlankQueue
    assert error.step_key == "b"


@pytest.mark.parametrize("job_type", ["", " \n"])
def test_blank_job_type(job_type: str) -> None:
    error = build_error(WorkflowBuilder("w").step("a").job(job_type))
    assert type(error) is BlankJobType
    assert error.step_key == "a"


@pytest.mark.parametrize("key", ["", "   "])
def test_blank_idempotency_key(key: str) -> None:
    error = build_error(WorkflowBuilder("w").idempotency_key(key).step("a").job("t"))
    assert type(error) is BlankIdempotencyKey
    assert error.step_key is None


def test_no_idempotency_key_is_fine() -> None:
    workflow = WorkflowBuilder("w").idempotency_key(None).step("a").job("t").build()
    assert workflow.idempotency_key is None


def test_unknown_result_step() -> None:
    error = build_error(WorkflowBuilder("w").result_step("nope").step("a").job("t"))
    assert type(error) is UnknownResultStep
    assert error.step_key == "nope"
    assert error.workflow_name == "w"


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("job", ("t",)),
        ("external", ()),
        ("after", ("a",)),
        ("after_terminal", ("a",)),
        ("payload", ({},)),
        ("queue", ("q",)),
        ("priority", (1,)),
        ("max_attempts", (1,)),
        ("timeout_seconds", (1,)),
    ],
)
def test_builder_misuse_before_any_step(method: str, args: tuple[Any, ...]) -> None:
    builder = WorkflowBuilder("w").input({"a": 1}).idempotency_key("k")
    with pytest.raises(BuilderMisuse) as info:
        getattr(builder, method)(*args)
    error = info.value
    assert isinstance(error, WorkflowBuildError)
    assert isinstance(error, ValueError)
    assert error.method == method
    assert error.workflow_name == "w"


def test_payload_not_serializable_on_a_step_payload() -> None:
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
    error = build_error(
        WorkflowBuilder("w")
        .step("a")
        .job("t")
        .payload({"ok": True})
        .step("b")
        .job("t")
        .payload({"items": [1, "two", {"when": when}]})
    )
    assert type(error) is PayloadNotSerializable
    assert error.step_key == "b"
    assert error.path == "$.items[2].when"
    assert error.type_name == "datetime.datetime"


@pytest.mark.parametrize(
    ("value", "path", "type_name"),
    [
        ({"at": {1, 2}}, "$input.at", "set"),
        ({"a b": [b"x"]}, '$input["a b"][0]', "bytes"),
        ([1, float("nan")], "$input[1]", "float"),
        (uuid.UUID(int=1), "$input", "uuid.UUID"),
    ],
)
def test_payload_not_serializable_on_the_input(value: Any, path: str, type_name: str) -> None:
    error = build_error(WorkflowBuilder("w").input(value).step("a").job("t"))
    assert type(error) is PayloadNotSerializable
    assert error.path == path
    assert error.path.startswith("$input")
    assert error.type_name == type_name
    assert error.step_key is None


def test_after_accepts_a_list_of_keys_like_step_after() -> None:
    workflow = (
        WorkflowBuilder("w")
        .step("a").job("x")
        .step("b").job("y")
        .step("c").job("z").after(["a", "b"])
        .build()
    )  # fmt: skip
    assert workflow.step("c").prerequisites == ("a", "b")


def test_first_offending_value_in_document_order_is_reported() -> None:
    from runledger.core.payload import check_json

    with pytest.raises(PayloadNotSerializable) as caught:
        check_json({"a": set(), "b": b""})
    assert caught.value.path == "$.a"
    with pytest.raises(PayloadNotSerializable) as caught:
        check_json([set(), b""])
    assert caught.value.path == "$[0]"


def test_option_errors_from_build_carry_the_workflow_name() -> None:
    with pytest.raises(PriorityOutOfRange) as caught:
        WorkflowBuilder("named").step("a", job="t", priority=1000).build()
    assert caught.value.workflow_name == "named"
    assert caught.value.step_key == "a"
