"""How the CLI prints: aligned tables, key/value blocks, times, and JSON for scripts.

Times follow one rule. A point in time prints as ISO-8601 UTC (``2024-05-01T12:00:03Z``) in
detail views (``jobs show``, ``runs show``) and in the events timeline, where the exact
instant matters, and as an age relative to the server's clock (``3.2s ago``, ``in 5m00s``)
in list tables. A span prints as a duration: ``12ms``, ``3.2s``, ``42s``, ``4m12s``,
``3h05m``, ``2d04h``. JSON always carries ISO-8601 UTC strings, and seconds as numbers.
"""

from __future__ import annotations

import datetime
import decimal
import json
import sys
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from runledger.core.payload import JsonValue

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


def fancy() -> bool:
    """True when stdout can print the box-drawing characters of trees and the ellipsis."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "├─└│…".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def duration(seconds: float) -> str:
    """A span as ``12ms``, ``3.2s``, ``42s``, ``4m12s``, ``3h05m`` or ``2d04h``."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < _MINUTE:
        return f"{whole}s"
    if whole < _HOUR:
        return f"{whole // _MINUTE}m{whole % _MINUTE:02d}s"
    if whole < _DAY:
        return f"{whole // _HOUR}h{whole % _HOUR // _MINUTE:02d}m"
    return f"{whole // _DAY}d{whole % _DAY // _HOUR:02d}h"


def span(start: datetime.datetime | None, end: datetime.datetime | None) -> str:
    """The duration from ``start`` to ``end``, or "" when either is unknown."""
    if start is None or end is None:
        return ""
    return duration((end - start).total_seconds())


def age(moment: datetime.datetime | None, now: datetime.datetime) -> str:
    """``moment`` relative to ``now``: ``3.2s ago``, ``in 5m00s``, or "" for None."""
    if moment is None:
        return ""
    delta = (now - moment).total_seconds()
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def timestamp(moment: datetime.datetime | None, *, precise: bool = False) -> str:
    """``moment`` as ISO-8601 UTC, to the second (or millisecond when ``precise``)."""
    if moment is None:
        return ""
    text = moment.astimezone(datetime.UTC).isoformat(
        timespec="milliseconds" if precise else "seconds"
    )
    return text.removesuffix("+00:00") + "Z"


def when(moment: datetime.datetime | None, now: datetime.datetime) -> str:
    """A detail view's time: ``2024-05-01T12:00:03Z (3.2s ago)``, or "" for None."""
    if moment is None:
        return ""
    return f"{timestamp(moment)} ({age(moment, now)})"


def attempts(attempt: int | None, max_attempts: int | None) -> str:
    """``2/5`` (attempts made of those allowed), ``0`` before the limit is known, or ""."""
    if attempt is None:
        return ""
    return str(attempt) if max_attempts is None else f"{attempt}/{max_attempts}"


def shorten(text: str | None, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    if not text:
        return ""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    ellipsis = "…" if fancy() else "..."
    return flat[: width - len(ellipsis)] + ellipsis


def compact_json(value: JsonValue) -> str:
    """A JSON value on one line, as stored."""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def _printable(cell: str) -> str:
    # A newline or an escape sequence in an error message would break the table's lines.
    return "".join(ch if ch.isprintable() else " " for ch in cell)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart under upper-case headers; no trailing blanks."""
    lines = [list(headers), *([_printable(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def fields(pairs: Iterable[tuple[str, str]]) -> str:
    """A key/value block (``status    failed``); pairs with an empty value are left out."""
    shown = [(key, _printable(value)) for key, value in pairs if value]
    width = max((len(key) for key, _ in shown), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in shown)


def _encode(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if attrs.has(type(value)):
        return record(value)
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")


def record(value: Any) -> dict[str, Any]:
    """An attrs record as a dict of its fields (nested values are encoded when printed)."""
    return attrs.asdict(value, recurse=False)


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON: uuids, times and records become strings/objects."""
    print(json.dumps(value, default=_encode, indent=2))
