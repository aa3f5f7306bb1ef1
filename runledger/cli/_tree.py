"""A workflow's dependency graph drawn as an indented tree, roots first.

A DAG is not a tree: a step with several prerequisites (a fan-in) is drawn once, under the
prerequisite that lies deepest (the longest chain from a root; the later step on a tie), and
names the others as ``also_after``. Each step's indentation is therefore its stage: the length
of the longest chain of prerequisites before it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import attrs


@attrs.frozen(kw_only=True)
class Glyphs:
    """The connectors drawn before a step's key."""

    branch: str
    last: str
    pipe: str
    blank: str


UNICODE = Glyphs(branch="├─ ", last="└─ ", pipe="│  ", blank="   ")
ASCII = Glyphs(branch="|-- ", last="`-- ", pipe="|   ", blank="    ")


@attrs.frozen(kw_only=True)
class Node:
    """One line of the tree."""

    key: str
    prefix: str
    """The connectors to draw before the key ("" for a root)."""
    depth: int
    also_after: tuple[str, ...]
    """Prerequisites other than the one the step is drawn under, in step order."""


def _topological(keys: Sequence[str], prerequisites: dict[str, list[str]]) -> list[str]:
    # Steps are stored in topological order already, which this keeps (Kahn's algorithm,
    # taking the earliest ready key each time); it only repairs an order that was not.
    index = {key: i for i, key in enumerate(keys)}
    waiting = {key: len(set(prerequisites[key])) for key in keys}
    dependents: dict[str, list[str]] = {key: [] for key in keys}
    for key in keys:
        for prerequisite in set(prerequisites[key]):
            dependents[prerequisite].append(key)
    ready = [index[key] for key in keys if waiting[key] == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        key = keys[heapq.heappop(ready)]
        ordered.append(key)
        for dependent in dependents[key]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, index[dependent])
    if len(ordered) < len(keys):  # a cycle, which validation rules out: draw them anyway
        placed = set(ordered)
        ordered.extend(key for key in keys if key not in placed)
    return ordered


def layout(
    keys: Sequence[str], edges: Iterable[tuple[str, str]], glyphs: Glyphs = UNICODE
) -> list[Node]:
    """The tree's lines, top to bottom.

    Args:
        keys: every step's key, in the run's step order (topological).
        edges: (step, prerequisite) pairs; pairs naming unknown keys are ignored.
        glyphs: the connectors to draw.
    """
    prerequisites: dict[str, list[str]] = {key: [] for key in keys}
    for step, prerequisite in edges:
        if step in prerequisites and prerequisite in prerequisites:
            prerequisites[step].append(prerequisite)
    ordered = _topological(keys, prerequisites)
    position = {key: i for i, key in enumerate(ordered)}
    depth: dict[str, int] = {}
    parent: dict[str, str | None] = {}
    for key in ordered:
        known = [p for p in prerequisites[key] if p in depth]
        if not known:
            depth[key], parent[key] = 0, None
            continue
        deepest = max(known, key=lambda p: (depth[p], position[p]))
        depth[key], parent[key] = depth[deepest] + 1, deepest
    children: dict[str | None, list[str]] = {key: [] for key in ordered}
    children[None] = []
    for key in ordered:
        children[parent[key]].append(key)

    nodes: list[Node] = []
    # Depth-first without recursion: a long chain of steps must not hit the recursion limit.
    # Each entry: (key, the connectors of its ancestors, is it its parent's last child).
    stack: list[tuple[str, str, bool]] = [(k, "", False) for k in reversed(children[None])]
    while stack:
        key, lead, last = stack.pop()
        is_root = parent[key] is None
        others = sorted(
            (p for p in prerequisites[key] if p != parent[key]), key=position.__getitem__
        )
        nodes.append(
            Node(
                key=key,
                prefix="" if is_root else lead + (glyphs.last if last else glyphs.branch),
                depth=depth[key],
                also_after=tuple(others),
            )
        )
        below = "" if is_root else lead + (glyphs.blank if last else glyphs.pipe)
        kids = children[key]
        for i in reversed(range(len(kids))):
            stack.append((kids[i], below, i == len(kids) - 1))
    return nodes
