"""Properties of workflow validation over random graphs: topological order and cycle reports."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.core.errors import CycleDetected
from runledger.core.status import ReleaseMode
from runledger.core.workflow import Workflow, WorkflowBuilder

# No example database: the tests must not write files into the checkout.
FAST = settings(max_examples=200, deadline=None, database=None)

# A graph maps each step key to {prerequisite: release mode}; insertion is the order of steps.
Graph = dict[str, dict[str, ReleaseMode]]

modes = st.sampled_from([ReleaseMode.ON_SUCCESS, ReleaseMode.ON_TERMINAL])


def key(i: int) -> str:
    return f"s{i}"


@st.composite
def dags(draw: st.DrawFn, min_size: int = 1, max_size: int = 12) -> Graph:
    """A random DAG: step i draws its prerequisites only from steps 0..i-1."""
    size = draw(st.integers(min_value=min_size, max_value=max_size))
    graph: Graph = {}
    for i in range(size):
        earlier = [key(j) for j in range(i)]
        prerequisites = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        graph[key(i)] = {p: draw(modes) for p in prerequisites}
    return graph


def build(graph: Mapping[str, Mapping[str, ReleaseMode]], insertion: list[str]) -> Workflow:
    builder = WorkflowBuilder("random")
    for step_key in insertion:
        builder.step(step_key).job("t")
        for prerequisite, mode in graph[step_key].items():
            if mode is ReleaseMode.ON_SUCCESS:
                builder.after(prerequisite)
            else:
                builder.after_terminal(prerequisite)
    return builder.build()


def has_cycle(graph: Mapping[str, Mapping[str, ReleaseMode]]) -> bool:
    """Reference check: repeatedly remove steps whose prerequisites are all removed."""
    remaining = {k: set(deps) for k, deps in graph.items()}
    while True:
        free = [k for k, deps in remaining.items() if not deps & remaining.keys()]
        if not free:
            return bool(remaining)
        for k in free:
            del remaining[k]


@FAST
@given(data=st.data(), graph=dags())
def test_valid_dags_build_in_a_topological_order(data: st.DataObject, graph: Graph) -> None:
    insertion = data.draw(st.permutations(list(graph)), label="insertion")

    workflow = build(graph, insertion)

    order = workflow.order
    assert sorted(order) == sorted(graph)
    assert len(set(order)) == len(order) == len(graph)
    position = {k: i for i, k in enumerate(order)}
    for step_key, prerequisites in graph.items():
        for prerequisite in prerequisites:
            assert position[prerequisite] < position[step_key]
    # Ties keep insertion order: each key is the earliest-added of the steps ready at its turn.
    added = {k: i for i, k in enumerate(insertion)}
    for turn, chosen in enumerate(order):
        placed = set(order[:turn])
        ready = [k for k in order[turn:] if set(graph[k]) <= placed]
        assert chosen in ready
        assert added[chosen] == min(added[k] for k in ready)
    for step_key, prerequisites in graph.items():
        spec = workflow.step(step_key)
        assert {d.prerequisite: d.mode for d in spec.dependencies} == prerequisites


@st.composite
def cyclic_graphs(draw: st.DrawFn) -> Graph:
    """A DAG, plus a chain through some of its steps closed by a back edge, plus stray edges."""
    graph = draw(dags(min_size=2))
    size = len(graph)
    chain = sorted(draw(st.lists(st.integers(0, size - 1), min_size=2, max_size=size, unique=True)))
    for before, after in itertools.pairwise(chain):
        graph[key(after)].setdefault(key(before), draw(modes))
    graph[key(chain[0])][key(chain[-1])] = draw(modes)  # the back edge closes the cycle
    extra = draw(
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, size - 1)), max_size=3)
    )
    for step, prerequisite in extra:
        if step != prerequisite:
            graph[key(step)].setdefault(key(prerequisite), draw(modes))
    return graph


@FAST
@given(data=st.data(), graph=cyclic_graphs())
def test_cycles_are_reported_with_a_real_cycle(data: st.DataObject, graph: Graph) -> None:
    insertion = data.draw(st.permutations(list(graph)), label="insertion")

    with pytest.raises(CycleDetected) as info:
        build(graph, insertion)

    cycle = info.value.step_keys
    assert isinstance(cycle, tuple)
    assert len(cycle) >= 2
    assert len(set(cycle)) == len(cycle)
    assert set(cycle) <= graph.keys()
    for i, step_key in enumerate(cycle):
        # cycle[i - 1] wraps to the last key for i == 0: the first depends on the last.
        assert cycle[i - 1] in graph[step_key], (step_key, cycle[i - 1])
    assert info.value.workflow_name == "random"


@st.composite
def directed_graphs(draw: st.DrawFn) -> Graph:
    """Any directed graph without self-loops, cyclic or not."""
    size = draw(st.integers(min_value=1, max_value=8))
    keys = [key(i) for i in range(size)]
    graph: Graph = {}
    for k in keys:
        others = [o for o in keys if o != k]
        prerequisites = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
        graph[k] = {p: draw(modes) for p in prerequisites}
    return graph


@FAST
@given(graph=directed_graphs())
def test_build_refuses_exactly_the_cyclic_graphs(graph: Graph) -> None:
    if has_cycle(graph):
        with pytest.raises(CycleDetected):
            build(graph, list(graph))
    else:
        assert sorted(build(graph, list(graph)).order) == sorted(graph)
