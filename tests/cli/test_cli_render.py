"""The CLI's printing, without a database: durations and ages, aligned tables, JSON of
records, and the layout of a dependency graph as a tree."""

from __future__ import annotations

import datetime
import json
import uuid

import pytest

from runledger.cli._render import age, duration, print_json, shorten, table, timestamp
from runledger.cli._tree import ASCII, layout

NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0ms"),
        (0.012, "12ms"),
        (3.24, "3.2s"),
        (42.9, "42s"),
        (252, "4m12s"),
        (3 * 3600 + 5 * 60 + 9, "3h05m"),
        (2 * 86400 + 4 * 3600, "2d04h"),
        (-5, "0ms"),
    ],
)
def test_duration_is_short_and_readable(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_age_is_past_or_future_and_timestamps_are_iso_utc() -> None:
    paris = datetime.timezone(datetime.timedelta(hours=2))

    assert age(NOW - datetime.timedelta(seconds=3.2), NOW) == "3.2s ago"
    assert age(NOW + datetime.timedelta(minutes=5), NOW) == "in 5m00s"
    assert age(None, NOW) == ""
    assert timestamp(datetime.datetime(2024, 5, 1, 14, 0, 3, 456000, tzinfo=paris)) == (
        "2024-05-01T12:00:03Z"
    )
    assert timestamp(NOW, precise=True) == "2024-05-01T12:00:00.000Z"


def test_table_aligns_columns_and_keeps_each_row_on_one_line() -> None:
    text = table(["A", "LONGER"], [("x", "1"), ("wide cell", "two\nlines\x1b[31m")])

    assert text.splitlines() == [
        "A          LONGER",
        "x          1",
        "wide cell  two lines [31m",
    ]
    assert shorten("a  b\nc " * 20, 10).endswith(("…", "..."))
    assert len(shorten("a  b\nc " * 20, 10)) == 10


def test_json_prints_uuids_times_and_durations_as_strings_and_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = uuid.UUID(int=7)

    print_json({"id": job_id, "at": NOW, "took": datetime.timedelta(seconds=1.5)})

    assert json.loads(capsys.readouterr().out) == {
        "id": str(job_id),
        "at": "2024-05-01T12:00:00+00:00",
        "took": 1.5,
    }


def test_tree_draws_roots_first_and_a_fan_in_under_its_deepest_prerequisite() -> None:
    keys = ["a", "root2", "b", "c", "d", "e"]
    edges = [("b", "a"), ("c", "a"), ("d", "b"), ("e", "d"), ("e", "c")]

    nodes = layout(keys, edges)

    assert [n.prefix + n.key for n in nodes] == [
        "a",
        "├─ b",
        "│  └─ d",
        "│     └─ e",
        "└─ c",
        "root2",
    ]
    assert [n.also_after for n in nodes] == [(), (), (), ("c",), (), ()]
    assert [n.depth for n in nodes] == [0, 1, 2, 3, 1, 0]


def test_tree_in_ascii_and_for_keys_out_of_order_and_a_long_chain() -> None:
    assert [n.prefix + n.key for n in layout(["b", "a", "c"], [("b", "a"), ("c", "a")], ASCII)] == [
        "a",
        "|-- b",
        "`-- c",
    ]
    chain = [f"s{i}" for i in range(3000)]
    nodes = layout(chain, [(chain[i], chain[i - 1]) for i in range(1, len(chain))])
    assert [n.key for n in nodes] == chain
    assert nodes[-1].depth == 2999
