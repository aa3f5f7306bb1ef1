"""Statement text as it is sent: the source's ``--`` comments and indentation taken out, and
the placeholders of the longest statement numbered once rather than at every execution.

psycopg caches its conversion of a statement's text (``%(name)s`` placeholders to ``$n``) only
for texts of at most 4,096 bytes (``MAX_CACHED_STATEMENT_LENGTH``); a longer one is converted
again at every execution, about 0.1 ms of the process's CPU. The claim and the finish run for
every job and are commented at length in the source, so they are sent compacted; the claims
(the flow-control one longer than the cache's limit even so) are also converted here once
(``Positional``) and sent by psycopg's ``RawCursor``, which converts nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

PSYCOPG_CACHED_LENGTH = 4096
"""The longest statement text psycopg converts once and caches (its
``_queries.MAX_CACHED_STATEMENT_LENGTH``)."""


def compact(sql: str) -> str:
    """``sql`` without its ``--`` comments, blank lines and leading or trailing spaces on a
    line; the lines stay lines. A ``--`` inside a single-quoted literal is kept. Statements
    with dollar-quoted bodies or double-quoted identifiers holding ``--`` must not be passed.
    """
    lines = []
    for line in sql.splitlines():
        code = _without_comment(line).strip()
        if code:
            lines.append(code)
    return "\n".join(lines) + "\n"


def _without_comment(line: str) -> str:
    quoted = False
    for i, char in enumerate(line):
        if char == "'":
            quoted = not quoted  # a doubled quote inside a literal toggles twice
        elif not quoted and line.startswith("--", i):
            return line[:i]
    return line


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%|%")


@attrs.frozen
class Positional:
    """A statement whose ``%(name)s`` placeholders are numbered ``$1``, ``$2``... in order of
    first appearance (a name used twice is one parameter), to run by psycopg's ``RawCursor``
    with ``args``."""

    text: str
    names: tuple[str, ...]

    def args(self, params: Mapping[str, object]) -> list[object]:
        """The values of ``params`` in the order of ``names`` (``KeyError`` for a missing one)."""
        return [params[name] for name in self.names]


def positional(sql: str) -> Positional:
    """``sql``, written with psycopg's ``%(name)s`` placeholders and ``%%`` for ``%``, for
    ``RawCursor``. Raises ``ValueError`` for a ``%`` that is neither, as psycopg would."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        if match[1] is not None:
            return f"${names.setdefault(match[1], len(names) + 1)}"
        if match[0] == "%%":
            return "%"
        raise ValueError(f"a lone % at character {match.start()}: write %% for a literal %")

    text = _PLACEHOLDER.sub(number, sql)
    return Positional(text=text, names=tuple(names))
