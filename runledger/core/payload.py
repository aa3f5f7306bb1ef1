"""JSON values: the check that a payload, input or output can be stored, and its canonical text.

Rule: payloads are plain JSON. dict (str keys), list, tuple (stored as a list), str (without
the NUL character, which jsonb cannot hold, or a lone surrogate, which UTF-8 cannot encode),
int, float (finite), bool and None are accepted;
anything else, including ``datetime``, ``set``, ``bytes``, ``Decimal`` and ``UUID``, is refused
with the path to the offending value. Convert such values yourself (``dt.isoformat()``,
``str(uuid)``) so the handler reads back exactly what you stored.

Size: the canonical JSON text of a payload may be at most ``MAX_PAYLOAD_BYTES`` bytes of UTF-8
unless the enqueueing call says otherwise (``dumps_within``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeAlias

from runledger.core.errors import PayloadNotSerializable, PayloadTooLarge, describe

JsonValue: TypeAlias = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None

# Deep payloads are refused rather than overflowing the stack (Postgres also caps jsonb depth).
MAX_DEPTH = 500

# A payload is a job's arguments, not its data: 1 MiB (Google Cloud Tasks' limit; SQS allows
# 256 KiB) holds any argument list while refusing, before the round trip, the accidental
# file or result set that would bloat the jobs table and every claim that reads it.
MAX_PAYLOAD_BYTES = 1_048_576
"""The default size limit of a payload's canonical JSON text, in bytes of UTF-8 (1 MiB)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def first_surrogate(text: str) -> int | None:
    """The index of the first surrogate code point in ``text``, or None.

    Python strings may hold lone surrogates (from ``surrogateescape`` decoding or a JSON
    ``\\ud800`` escape) but UTF-8 cannot encode them.
    """
    if text.isascii():  # O(1) in CPython
        return None
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


def check_json(value: Any, *, step_key: str | None = None, root: str = "$") -> None:
    """Raise ``PayloadNotSerializable`` naming the first value that is not plain JSON.

    Runs in time linear in the size of the value; does not copy it.
    """
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PayloadNotSerializable(
                path=path,
                type_name=describe(item),
                reason="nested too deeply",
                step_key=step_key,
            )
        if isinstance(item, str):
            if "\x00" in item:
                raise PayloadNotSerializable(
                    path=path, type_name="str",
                    reason="PostgreSQL cannot store the NUL character (\\x00) in JSON text",
                    step_key=step_key,
                )  # fmt: skip
            _check_surrogate(item, path, step_key)
            continue
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise PayloadNotSerializable(
                    path=path,
                    type_name="float",
                    reason=f"{item!r} has no JSON form",
                    step_key=step_key,
                )
            continue
        if isinstance(item, dict):
            # Pushed in reverse so the first offending value in document order is reported.
            for key, child in reversed(item.items()):
                if not isinstance(key, str) or "\x00" in key:
                    raise PayloadNotSerializable(
                        path=f"{path}[{key!r}]",
                        type_name=describe(key),
                        reason=f"object keys must be str without NUL, not {key!r}",
                        step_key=step_key,
                    )
                _check_surrogate(key, f"{path}[{key!r}]", step_key)
                stack.append(
                    (
                        child,
                        f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key)}]",
                        depth + 1,
                    )
                )
            continue
        if isinstance(item, list | tuple):
            for index, child in reversed(list(enumerate(item))):
                stack.append((child, f"{path}[{index}]", depth + 1))
            continue
        raise PayloadNotSerializable(
            path=path,
            type_name=describe(item),
            reason=f"{describe(item)} is not a JSON type" + _hint(item),
            step_key=step_key,
        )


def _check_surrogate(text: str, path: str, step_key: str | None) -> None:
    position = first_surrogate(text)
    if position is not None:
        raise PayloadNotSerializable(
            path=path,
            type_name="str",
            reason=f"a lone surrogate ({text[position]!r} at index {position}) has no UTF-8 "
            "form; fix the text where it was decoded (errors='replace')",
            step_key=step_key,
        )


def _hint(item: Any) -> str:
    import datetime
    import uuid

    if isinstance(item, datetime.date | datetime.time):
        return "; store value.isoformat() instead"
    if isinstance(item, uuid.UUID):
        return "; store str(value) instead"
    if isinstance(item, set | frozenset):
        return "; store sorted(value) instead"
    if isinstance(item, bytes | bytearray):
        return "; store base64 text instead"
    return ""


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """The canonical JSON text of a checked value: sorted keys, no spaces."""
    return _ENCODER.encode(value)


def dumps_within(value: Any, *, limit: int, root: str = "$", step_key: str | None = None) -> str:
    """``dumps(value)``, refused with ``PayloadTooLarge`` if over ``limit`` bytes of UTF-8.

    ``root`` and ``step_key`` name the value in the error, as for ``check_json``.
    """
    text = dumps(value)
    # Most payloads are ASCII, whose length is their size: encoding them would copy the text.
    size = len(text) if text.isascii() else len(text.encode())
    if size > limit:
        raise PayloadTooLarge(path=root, size=size, limit=limit, step_key=step_key)
    return text
