"""Database URLs between SQLAlchemy's form and libpq's, for the Flask integration."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from runledger.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9.+-]*)://")
_POSTGRES_SCHEME = re.compile(r"^postgres(?:ql)?(?:\+[A-Za-z0-9_]+)?$", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def libpq_dsn(url: str | URL) -> str:
    """The libpq connection string for a database URL, as psycopg and ``Store`` take it.

    A SQLAlchemy URL loses its driver (``postgresql+psycopg://u@h/db`` becomes
    ``postgresql://u@h/db``; any ``+driver`` goes: runledger connects with psycopg 3 itself).
    A ``sqlalchemy.URL`` object is rendered with its password. A ``key=value`` string is
    returned as it is.

    Raises:
        ConfigError: the URL is not a PostgreSQL one (``sqlite://``, ``mysql://``, ...).
    """
    return to_dsn("database URL", url)


def sqlalchemy_url(dsn: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) for a libpq DSN, URL or ``key=value`` form.

    ``"dbname=app host=/run/postgresql"`` gives ``postgresql+psycopg:///app?host=...``; use
    it for ``SQLALCHEMY_DATABASE_URI`` when the environment gives a libpq DSN. The password,
    if any, is kept in the result. Needs SQLAlchemy.
    """
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    url = URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        database=params.pop("dbname", None),
        # Host and port stay query parameters, which the psycopg dialect passes on as they
        # are: that keeps unix-socket directories and multi-host lists intact.
        query=params,
    )
    return url.render_as_string(hide_password=False)


def to_dsn(name: str, value: object) -> str:
    """``libpq_dsn`` of the config value ``name``; a ``ConfigError`` names that key."""
    if not isinstance(value, str):
        render = getattr(value, "render_as_string", None)
        if not callable(render):
            raise ConfigError(name=name, value=repr(value), expected="a PostgreSQL URL string")
        value = str(render(hide_password=False))
    found = _URL_SCHEME.match(value)
    if found is None:
        if not value.strip():
            raise ConfigError(name=name, value=value, expected="a PostgreSQL URL")
        return value  # a key=value connection string
    if not _POSTGRES_SCHEME.match(found["scheme"]):
        raise ConfigError(
            name=name,
            value=_URL_PASSWORD.sub(r"\1***@", value),
            expected="a PostgreSQL URL (postgresql:// or postgresql+psycopg://)",
        )
    return "postgresql://" + value[found.end() :]
