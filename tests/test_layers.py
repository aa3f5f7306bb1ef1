"""Layering (docs/architecture.md §1: integrations -> runtime -> postgres -> core), public surface.

The imports are read with ``ast`` from the source files, so every import counts: top level,
inside functions and under ``TYPE_CHECKING`` alike. No database needed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import runledger
import runledger.errors

PACKAGE = Path(runledger.__file__).resolve().parent

# What core may import besides itself: the standard library and its two pure dependencies.
CORE_THIRD_PARTY = {"attrs", "croniter"}

# What each layer must never import (a module or anything under it).
FORBIDDEN = {
    "postgres": ("runledger.runtime", "runledger.contrib", "runledger.cli"),
    "runtime": ("runledger.contrib", "runledger.cli"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """The absolute names of everything ``path`` imports (``from a import b`` gives ``a.b``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            if base == "__future__":
                continue
            # "from pkg import name" may import the submodule pkg.name or a name from pkg;
            # count the more specific one, which is what a layer boundary cares about.
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def _layer_files(layer: str) -> list[Path]:
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"no modules under runledger/{layer}"
    return files


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", _layer_files("core"), ids=lambda p: p.name)
def test_core_imports_only_stdlib_attrs_croniter_and_core(path: Path) -> None:
    wrong = [
        name
        for name in _imports(path)
        if not _within(name, "runledger.core")
        and name.partition(".")[0] not in sys.stdlib_module_names
        and name.partition(".")[0] not in CORE_THIRD_PARTY
    ]

    assert wrong == [], f"{_module_name(path)} imports {wrong}"


@pytest.mark.parametrize("path", _layer_files("core"), ids=lambda p: p.name)
def test_core_imports_no_psycopg(path: Path) -> None:
    assert not any(_within(name, "psycopg") for name in _imports(path))
    assert not any(_within(name, "psycopg_pool") for name in _imports(path))


@pytest.mark.parametrize(
    ("layer", "path"),
    [(layer, path) for layer in FORBIDDEN for path in _layer_files(layer)],
    ids=lambda value: value.name if isinstance(value, Path) else str(value),
)
def test_layer_imports_nothing_from_the_layers_above_it(layer: str, path: Path) -> None:
    wrong = [
        name
        for name in _imports(path)
        if any(_within(name, above) for above in FORBIDDEN[layer])
        # "import runledger" / "from runledger import x" loads the whole public API, runtime
        # included: a lower layer must import the module it needs instead.
        or name in ("runledger", "runledger.__init__")
    ]

    assert wrong == [], f"{_module_name(path)} imports {wrong}"


def test_import_reader_resolves_relative_and_from_imports() -> None:
    # The checks above are only as good as _imports; pin its behaviour on a known file.
    path = PACKAGE / "core" / "workflow.py"
    names = _imports(path)

    assert "runledger.core.errors.CycleDetected" in names
    assert "attrs" in names
    assert not any(name.startswith("__future__") for name in names)


def _ruff_all_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 (enabled in pyproject) keeps ``__all__`` in.

    "isort-style": SCREAMING_SNAKE_CASE names first, then CamelCase, then everything else,
    each group alphabetical.
    """
    if len(name) > 1 and name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_public_all_is_sorted_as_the_linter_sorts_it() -> None:
    assert runledger.__all__ == sorted(runledger.__all__, key=_ruff_all_order)


def test_public_all_has_no_duplicates_and_every_name_exists() -> None:
    assert len(set(runledger.__all__)) == len(runledger.__all__)
    assert [name for name in runledger.__all__ if not hasattr(runledger, name)] == []


def test_public_api_has_the_names_of_the_design() -> None:
    assert {
        "Job",
        "Registry",
        "WorkflowBuilder",
        "enqueue",
        "enqueue_many",
        "enqueue_workflow",
        "errors",
        "get_job",
        "get_workflow_run",
        "list_events",
        "list_jobs",
        "migrate",
    } <= set(runledger.__all__)


def test_errors_all_is_sorted_and_every_name_is_a_runledger_error() -> None:
    names = runledger.errors.__all__

    assert names == sorted(names, key=_ruff_all_order)
    assert len(set(names)) == len(names)
    wrong = [
        name
        for name in names
        if not (
            isinstance(getattr(runledger.errors, name, None), type)
            and issubclass(getattr(runledger.errors, name), runledger.errors.RunledgerError)
        )
    ]
    assert wrong == []


def test_validation_errors_are_value_errors() -> None:
    assert issubclass(runledger.errors.ValidationError, ValueError)
    for name in runledger.errors.__all__:
        cls = getattr(runledger.errors, name)
        if issubclass(cls, (runledger.errors.JobOptionError, runledger.errors.WorkflowBuildError)):
            assert issubclass(cls, ValueError), name
