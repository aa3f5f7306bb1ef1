"""The options and argument types the commands share: ``--dsn``, ``--json``, ids and limits.

A malformed argument is a usage error (exit code 2, argparse's own message), found before
anything connects to the database.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from typing import TypeAlias

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: each command module adds its parsers to it."""

DSN_HELP = "PostgreSQL DSN (default: $RUNLEDGER_DSN or $DATABASE_URL)"


def dsn_option() -> argparse.ArgumentParser:
    """A parent parser giving a command ``--dsn``.

    Its default is SUPPRESS so that a ``--dsn`` given before the command name
    (``runledger --dsn ... jobs list``) is not overwritten by the subcommand's default.
    """
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--dsn", default=argparse.SUPPRESS, help=DSN_HELP)
    return parent


def json_option() -> argparse.ArgumentParser:
    """A parent parser giving a read command ``--json``."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", help="print JSON (uuids and times as strings)"
    )
    return parent


def identifier(what: str) -> Callable[[str], uuid.UUID]:
    """An argument type that parses the UUID of a ``what`` (a job, a workflow run)."""

    def parse(text: str) -> uuid.UUID:
        try:
            return uuid.UUID(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} id (a UUID)") from None

    parse.__name__ = f"{what} id"
    return parse


def limit(text: str) -> int:
    """An argument type for ``--limit``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
