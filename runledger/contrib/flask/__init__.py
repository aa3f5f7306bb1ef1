"""Flask integration: settings from ``app.config``, enqueue inside the request's transaction,
``flask runledger worker`` / ``flask runledger migrate``, and an optional in-process runtime.

``Runledger(app, registry=registry)`` (or ``init_app`` in an app factory) reads its settings
from ``app.config``; ``enqueue(db.session, ...)`` writes the job on the SQLAlchemy session's
psycopg 3 connection, so it commits and rolls back with the session. The walk-through is in
``docs/flask.md``; the complete example in ``examples/flask_app/``.

Modules: ``_settings`` (``app.config``), ``_dsn`` (URLs), ``_session`` (enqueue on a session),
``_extension`` (``Runledger``) and ``_cli`` (the commands); import from this package.
"""

from __future__ import annotations

from runledger.contrib.flask._cli import cli
from runledger.contrib.flask._dsn import libpq_dsn, sqlalchemy_url
from runledger.contrib.flask._extension import EXTENSION_KEY, Runledger
from runledger.contrib.flask._session import (
    SessionLike as SessionLike,  # a public name for annotations, not in __all__ (as before)
)
from runledger.contrib.flask._session import (
    enqueue,
    enqueue_many,
    enqueue_workflow,
    session_connection,
)
from runledger.contrib.flask._settings import FlaskSettings, settings_from_config
from runledger.errors import UnsupportedDriver

__all__ = [
    "EXTENSION_KEY",
    "FlaskSettings",
    "Runledger",
    "UnsupportedDriver",
    "cli",
    "enqueue",
    "enqueue_many",
    "enqueue_workflow",
    "libpq_dsn",
    "session_connection",
    "settings_from_config",
    "sqlalchemy_url",
]
