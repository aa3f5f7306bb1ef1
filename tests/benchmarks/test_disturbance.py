"""throughput.py measures a figure again only when the machine changed the way its rate did."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _probe import Evidence
from throughput import Throughput, disturbance


def figure(
    windows: Sequence[float],
    *,
    steal: Sequence[float | None] = (0.0, 0.0),
    loop: Sequence[float | None] = (4.0, 4.0),
) -> Throughput:
    """A figure of ``windows`` whose probe saw ``steal`` and ``loop`` in its first and last
    windows (flat in between)."""
    n = len(windows)
    evidence = Evidence(
        head_buffers=(100.0,) * n,
        commit_ms=(0.5,) * n,
        process_cpu=(1.0,) * n,
        vacuuming=((),) * n,
        idle=(0.2,) * n,
        steal=(steal[0], *([steal[0]] * (n - 2)), steal[-1]),
        work_ms=(loop[0], *([loop[0]] * (n - 2)), loop[-1]),
    )
    return Throughput(name="c", windows=tuple(windows), seconds=10.0 * n, jobs=1, evidence=evidence)


def test_a_flat_machine_is_no_excuse_for_a_decay() -> None:
    assert disturbance(figure([1000, 900, 800, 700])) is None


def test_a_fall_with_more_steal_is_disturbed() -> None:
    why = disturbance(figure([1000, 900, 700], steal=(0.0, 0.12)))
    assert why == "steal 0%->12%"


def test_a_rise_as_steal_goes_away_is_disturbed() -> None:
    assert disturbance(figure([988, 1600, 1823], steal=(0.31, 0.01))) == "steal 31%->1%"


def test_steal_moving_against_the_drift_explains_nothing() -> None:
    assert disturbance(figure([1000, 900, 700], steal=(0.31, 0.01))) is None
    assert disturbance(figure([1000, 1200, 1300], steal=(0.0, 0.12))) is None


@pytest.mark.parametrize(
    ("windows", "loop", "disturbed"),
    [
        ([3923, 4500, 5041], (4.8, 4.1), True),  # rise on a faster core
        ([1000, 900, 700], (4.0, 4.6), True),  # fall on a slower core
        ([1000, 900, 700], (4.8, 4.1), False),  # fall although the core got faster
        ([1000, 900, 700], (4.0, 4.3), False),  # within 10 %
    ],
)
def test_the_fixed_loop_counts_only_in_the_drifts_direction(
    windows: list[float], loop: tuple[float, float], disturbed: bool
) -> None:
    assert (disturbance(figure(windows, loop=loop)) is not None) is disturbed


def test_a_figure_without_evidence_is_not_disturbed() -> None:
    assert disturbance(Throughput(name="c", windows=(1000.0, 500.0), seconds=20, jobs=1)) is None
