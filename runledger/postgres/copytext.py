"""Values as PostgreSQL's COPY text format spells them, for bulk writes formatted in Python.

COPY text separates columns with tabs and rows with newlines, spells NULL ``\\N`` and escapes
backslash, tab, newline and carriage return with a backslash. Callers have already refused
the NUL character, which no text value can hold.
"""

from __future__ import annotations

NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(value: str) -> str:
    """``value`` escaped for a COPY text column."""
    return value.translate(_ESCAPES)


def copy_json_text(text: str) -> str:
    """The canonical JSON text of a checked value (``dumps``), escaped for a COPY column."""
    # JSON text escapes every control character itself, so a backslash is all COPY needs
    # escaped, and replace() is far cheaper than translate() on a large payload.
    return text.replace("\\", "\\\\") if "\\" in text else text


def copy_int(value: int | None) -> str:
    """An integer column, or NULL."""
    return NULL if value is None else str(value)
