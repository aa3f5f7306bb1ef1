"""runledger.core.payload: which values are plain JSON, where a refusal points, canonical text."""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.core.errors import JobOptionError, PayloadNotSerializable, WorkflowBuildError
from runledger.core.payload import MAX_DEPTH, check_json, dumps


class Thing:
    """An arbitrary object with no JSON form."""


def refusal(value: Any, **kwargs: Any) -> PayloadNotSerializable:
    with pytest.raises(PayloadNotSerializable) as info:
        check_json(value, **kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, JobOptionError)
    assert isinstance(error, WorkflowBuildError)
    assert error.reason
    return error


def nested_lists(innermost: Any, levels: int) -> Any:
    """``innermost`` wrapped in ``levels`` lists, built without recursion."""
    value = innermost
    for _ in range(levels):
        value = [value]
    return value


# --- refusals and where they point ------------------------------------------------------------


WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("bad", "type_name"),
    [
        ({1, 2}, "set"),
        (frozenset({"a"}), "frozenset"),
        (b"raw", "bytes"),
        (bytearray(b"raw"), "bytearray"),
        (Thing(), f"{Thing.__module__}.Thing"),
        (WHEN, "datetime.datetime"),
        (WHEN.date(), "datetime.date"),
        (datetime.timedelta(seconds=1), "datetime.timedelta"),
        (uuid.UUID(int=7), "uuid.UUID"),
        (decimal.Decimal("1.10"), "decimal.Decimal"),
        (float("nan"), "float"),
        (float("inf"), "float"),
        (float("-inf"), "float"),
        (1 + 2j, "complex"),
        (object, "type"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)
def test_non_json_values_are_refused_with_path_and_type(bad: Any, type_name: str) -> None:
    payload = {"items": [0, "one", {"when": bad, "ok": 1}], "fine": None}
    error = refusal(payload)
    assert error.path == "$.items[2].when"
    assert error.type_name == type_name
    assert error.step_key is None


@pytest.mark.parametrize("bad", [{1, 2}, b"x", WHEN, float("nan"), Thing()])
def test_a_bad_value_at_the_root_is_named_by_the_root(bad: Any) -> None:
    assert refusal(bad).path == "$"


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"a b": {1}}, '$["a b"]'),
        ({"x-y": [b""]}, '$["x-y"][0]'),
        ({"": {1}}, '$[""]'),
        ({"1st": {1}}, '$["1st"]'),
        ({'say "hi"': {1}}, '$["say \\"hi\\""]'),
        ({"a.b": {1}}, '$["a.b"]'),
        ({"snake_case": {"camelCase": {1}}}, "$.snake_case.camelCase"),
        ({"outer": {"in ner": [[0, {1}]]}}, '$.outer["in ner"][0][1]'),
    ],
)
def test_keys_that_are_not_identifiers_use_bracket_form(payload: Any, path: str) -> None:
    assert refusal(payload).path == path


@pytest.mark.parametrize(
    ("key", "type_name"),
    [(1, "int"), (1.5, "float"), (None, "NoneType"), (True, "bool"), ((1, 2), "tuple")],
)
def test_non_str_dict_keys_are_refused(key: Any, type_name: str) -> None:
    error = refusal({"outer": {"ok": 1, key: "value"}})
    assert error.path == f"$.outer[{key!r}]"
    assert error.type_name == type_name


def test_root_and_step_key_are_carried() -> None:
    error = refusal({"a": {1}}, root="$input", step_key="charge")
    assert error.path == "$input.a"
    assert error.step_key == "charge"


def test_a_nested_refusal_inside_a_tuple() -> None:
    assert refusal(("a", ("b", {"c": {1}}))).path == "$[1][1].c"


def test_a_dict_subclass_is_json_but_another_mapping_is_not() -> None:
    class Ordered(dict[str, Any]):
        pass

    check_json(Ordered(a=1))
    error = refusal({"m": _Mapping()})
    assert error.path == "$.m"
    assert error.type_name == f"{_Mapping.__module__}._Mapping"


class _Mapping:
    """Mapping-like but not a dict: refused, since json.dumps refuses it too."""

    def keys(self) -> list[str]:
        return ["a"]

    def __getitem__(self, key: str) -> int:
        return 1


# --- accepted values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**70),
        1.5,
        -0.0,
        "",
        "text ✓",
        [],
        {},
        (),
        {"a": [1, 2.5, None, True, "s", {"b": (3, [4, (5,)])}], "a b": {}, "": []},
        ((), [()], {"t": ((1, 2), (3,))}),
    ],
)
def test_nested_valid_json_is_accepted(value: Any) -> None:
    check_json(value)
    json.dumps(value, allow_nan=False)  # and the standard library agrees


def test_tuples_are_written_as_lists() -> None:
    assert json.loads(dumps({"t": (1, (2, 3))})) == {"t": [1, [2, 3]]}


def test_a_one_megabyte_payload_is_accepted() -> None:
    payload = {
        "blob": "x" * 500_000,
        "rows": [{"id": i, "name": f"row {i}", "tags": ["a", "b"]} for i in range(12_000)],
    }
    text = dumps(payload)
    assert len(text) > 1_000_000
    check_json(payload)


def test_depth_up_to_the_limit_is_accepted() -> None:
    check_json(nested_lists(1, MAX_DEPTH))
    check_json(nested_lists([], MAX_DEPTH))  # the innermost empty list sits at MAX_DEPTH


def test_deeper_than_the_limit_is_refused() -> None:
    error = refusal(nested_lists(1, MAX_DEPTH + 1))
    assert error.path == "$" + "[0]" * (MAX_DEPTH + 1)
    assert error.type_name == "int"


def test_deep_dicts_are_refused_with_their_path() -> None:
    value: Any = "leaf"
    for _ in range(MAX_DEPTH + 1):
        value = {"k": value}
    error = refusal(value)
    assert error.path == "$" + ".k" * (MAX_DEPTH + 1)


def test_very_deep_nesting_is_refused_not_a_recursion_error() -> None:
    error = refusal(nested_lists(None, 200_000))
    assert error.path.startswith("$[0][0]")
    assert error.path.count("[0]") == MAX_DEPTH + 1


def test_a_self_containing_list_is_refused_as_too_deep() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert refusal(loop).type_name == "list"


# --- dumps ------------------------------------------------------------------------------


def test_dumps_is_canonical() -> None:
    assert dumps({"b": 1, "a": [1, 2], "c": {"z": None, "y": "é"}}) == (
        '{"a":[1,2],"b":1,"c":{"y":"é","z":null}}'
    )
    assert dumps({"x": 1, "y": 2}) == dumps({"y": 2, "x": 1})


# --- property: every JSON value passes and round-trips ----------------------------------------

# What PostgreSQL can store as JSON text: no NUL, no lone surrogate (category Cs).
STORABLE = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=STORABLE),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(STORABLE, max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, database=None)
@given(value=json_values)
def test_any_json_value_passes_and_round_trips(value: Any) -> None:
    check_json(value)
    assert json.loads(dumps(value)) == value
