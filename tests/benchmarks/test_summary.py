"""throughput.py's summary keeps every column apart, however many checkpoints a figure saw."""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from test_disturbance import figure
from throughput import print_summary


def test_a_long_list_of_checkpoint_windows_stays_apart_from_the_loop_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    busy = figure([1000, 990, 980, 1000, 990, 1000], loop=(1.9, 2.0))
    busy = attrs.evolve(
        busy,
        name="busy",
        evidence=attrs.evolve(busy.evidence, checkpoints=(0, 1, 1, 0, 1, 1)),
    )
    quiet = attrs.evolve(figure([1000, 1000], loop=(1.8, 1.8)), name="quiet")
    print_summary([busy, quiet], [])
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert "2.0  w2,w3,w5,w6" in rows["busy"]
    # Both rows put their checkpoint column at the same place.
    quiet_ckpt = rows["quiet"].index("1.8->1.8  -") + len("1.8->1.8  ")
    assert rows["busy"].index("w2,w3") == quiet_ckpt
