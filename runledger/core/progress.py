"""Job progress: the checked, stored form of what a handler reports with ``ctx.progress``.

The stored value (``runledger.jobs.progress``) is always a JSON object:

- ``ctx.progress(0.4, note="page 4 of 10")`` stores
  ``{"fraction": 0.4, "note": "page 4 of 10", "attempt": 2, "at": "2026-...+00:00"}``;
- ``ctx.progress({"pages": 4})`` stores ``{"value": {"pages": 4}, "attempt": 2, "at": ...}``.

``note`` is left out when not given; ``attempt`` is the attempt that reported it and ``at``
when it did (the worker's clock, ISO 8601 in UTC), so a reader can tell a stale value.
"""

from __future__ import annotations

import datetime
import math

from runledger.core.errors import PayloadNotSerializable, PayloadTooLarge, ValidationError
from runledger.core.payload import JsonValue, check_json, dumps, dumps_within

MAX_PROGRESS_BYTES = 8 * 1024
"""The largest stored progress value, in bytes of its JSON text: the heartbeat writes it with
every renewal, so it is a summary, not data."""


class InvalidProgress(ValidationError):
    """``ctx.progress`` refused its arguments.

    Attributes:
        field: ``fraction``, ``note`` or ``value``.
        value: what was given.
        rule: what it must be.
    """

    def __init__(self, *, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"ctx.progress(): {field} must be {rule}, got {shown}")


def progress_json(
    value: JsonValue, *, note: str | None, attempt: int, at: datetime.datetime
) -> str:
    """The stored form of ``ctx.progress(value, note=note)`` reported by attempt ``attempt``
    at ``at`` (an aware datetime), as canonical JSON text. Pure.

    A number (int or float, not bool) is a fraction of the work done, from 0 to 1; any
    other JSON value is stored as given under ``value``.

    Raises:
        InvalidProgress: the fraction is outside [0, 1] or NaN, ``note`` is not a string, the
            value is not plain JSON (see ``runledger.core.payload``), or the whole is larger
            than ``MAX_PROGRESS_BYTES``.
    """
    stored: dict[str, JsonValue]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise InvalidProgress(field="fraction", value=value, rule="a number from 0 to 1")
        stored = {"fraction": float(value)}
    else:
        try:
            check_json(value, root="$value")
        except PayloadNotSerializable as err:
            raise InvalidProgress(field="value", value=value, rule=f"plain JSON ({err})") from None
        stored = {"value": value}
    if note is not None:
        if not isinstance(note, str):
            raise InvalidProgress(field="note", value=note, rule="a string or None")
        try:
            check_json(note, root="$note")
        except PayloadNotSerializable as err:
            raise InvalidProgress(field="note", value=note, rule=f"storable text ({err})") from None
        stored["note"] = note
    stored["attempt"] = attempt
    stored["at"] = at.astimezone(datetime.UTC).isoformat()
    try:
        return dumps_within(stored, limit=MAX_PROGRESS_BYTES)
    except PayloadTooLarge as err:
        raise InvalidProgress(
            field="value" if "value" in stored else "note",
            value=value if "value" in stored else note,
            rule=f"at most {MAX_PROGRESS_BYTES} bytes of JSON in all, not {err.size}",
        ) from None


def describe_progress(stored: JsonValue) -> str:
    """A stored progress value in one line for people: ``40% page 4 of 10``, or the compact
    JSON of a ``value`` followed by its note; "" for None. Values not of this module's shape
    (written by hand) are shown as compact JSON. Pure."""
    if stored is None:
        return ""
    if not isinstance(stored, dict):
        return dumps(stored)
    note = stored.get("note")
    fraction = stored.get("fraction")
    if isinstance(fraction, int | float) and not isinstance(fraction, bool):
        # Shown to one decimal, and never 100% before the fraction really is 1.
        shown = f"{math.floor(fraction * 1000) / 10:g}%"
    elif "value" in stored:
        shown = dumps(stored["value"])
    else:
        return dumps(stored)
    return f"{shown} {note}" if isinstance(note, str) and note else shown
