"""Django's database connections as runledger sees them: the psycopg 3 connection under a
``DatabaseWrapper`` (for enqueueing in Django's transaction) and a libpq DSN built from
``settings.DATABASES`` (for the runtime's own pool)."""

from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import pq
from psycopg.conninfo import make_conninfo

# What Django passes to psycopg.connect() that is not a libpq keyword.
_PYTHON_ONLY = frozenset({"context", "cursor_factory", "prepare_threshold", "autocommit"})


def psycopg_connection(using: str = DEFAULT_DB_ALIAS) -> psycopg.Connection[Any]:
    """The psycopg 3 connection of Django's database ``using``, connected if it was not.

    The connection belongs to the current thread, like ``django.db.connections[using]``.
    Inside ``transaction.atomic(using=using)`` it is in that transaction (Django turned
    autocommit off); outside it is in autocommit mode, where runledger's writes take a short
    transaction of their own.

    Raises:
        ImproperlyConfigured: the database is not PostgreSQL, or Django runs it on psycopg2.
        TransactionManagementError: the atomic block is broken (an earlier query failed in
            it), as Django's own queries would raise.
    """
    wrapper = connections[using]
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"runledger needs PostgreSQL; database {using!r} is {wrapper.vendor}"
        )
    wrapper.validate_no_broken_transaction()
    wrapper.ensure_connection()
    raw = wrapper.connection
    if not isinstance(raw, psycopg.Connection):
        raise ImproperlyConfigured(
            f"runledger needs Django to use psycopg 3 for database {using!r}, found "
            f"{type(raw).__module__}.{type(raw).__qualname__}; install psycopg (3) and "
            "uninstall psycopg2"
        )
    return raw


def database_dsn(using: str = DEFAULT_DB_ALIAS) -> str:
    """A libpq DSN for runledger's own connections (the worker's pool, the listener).

    ``settings.RUNLEDGER_DATABASE_URL`` when set (the same database, reached another way:
    another role, or around a PgBouncer in transaction pooling mode, which cannot LISTEN);
    otherwise ``DATABASES[using]`` as Django connects to it: NAME, USER, PASSWORD, HOST, PORT
    and the libpq keywords of OPTIONS (``sslmode``, ``service``, ``options``, ...).

    Raises:
        ImproperlyConfigured: the database is not PostgreSQL or is not configured.
    """
    url = getattr(settings, "RUNLEDGER_DATABASE_URL", None)
    if url:
        return str(url)
    wrapper = connections[using]
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"runledger needs PostgreSQL; database {using!r} is {wrapper.vendor}"
        )
    params = wrapper.get_connection_params()
    known = {option.keyword.decode() for option in pq.Conninfo.get_defaults()}
    keywords = {
        key: value
        for key, value in params.items()
        if key not in _PYTHON_ONLY and key in known and value is not None and value != ""
    }
    return make_conninfo("", **keywords)
