"""``runledger.contrib.flask`` against real Postgres: settings from ``app.config``, enqueue in a
SQLAlchemy session's transaction (commit, rollback, savepoints, a view that raises), the plain
psycopg ``ext.connection()``, the in-process runtime, and the ``flask runledger`` commands,
including a worker run as a real subprocess and stopped with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import sqlalchemy
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import orm, text

import runledger
from runledger.contrib import flask as rl
from runledger.contrib.flask import Runledger
from runledger.errors import (
    ConfigError,
    JobNotFound,
    SchemaNotMigrated,
    UnknownJobType,
    WorkflowRunNotFound,
)
from runledger.runtime.config import RUNTIME_VARIABLES, settings_from_env

SIGNUPS = "create table signups (id bigserial primary key, email text not null unique)"


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def job_exists(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> bool:
    try:
        runledger.get_job(conn, job_id)
    except JobNotFound:
        return False
    return True


def job_status(dsn: str, job_id: uuid.UUID) -> runledger.JobStatus:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return runledger.get_job(conn, job_id).status


def emails(conn: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in conn.execute("select email from signups order by id").fetchall()]


@pytest.fixture
def registry() -> runledger.Registry:
    reg = runledger.Registry()

    @reg.handler("signup.welcome")
    def welcome(ctx: runledger.JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        return {"welcomed": payload["email"]}

    @reg.handler("signup.audit", queue="audit", max_attempts=7)
    def audit(ctx: runledger.JobContext, payload: dict[str, Any]) -> None:
        return None

    return reg


@attrs.define
class FlaskApp:
    """An app under test with its Flask-SQLAlchemy and runledger extensions."""

    app: Flask
    db: SQLAlchemy
    ext: Runledger


@pytest.fixture
def make_app(
    dsn: str, registry: runledger.Registry, autocommit_conn: psycopg.Connection[Any]
) -> Iterator[Callable[..., FlaskApp]]:
    """``make_app(**config)``: a Flask app on the test database with a ``signups`` table and
    two views, ``/signup`` (commits) and ``/signup-then-crash`` (raises after enqueueing).

    Every app is closed after the test: its runledger store and runtime, and its engine's
    pooled connections.
    """
    autocommit_conn.execute(SIGNUPS)
    built: list[FlaskApp] = []

    def make(**config: Any) -> FlaskApp:
        app = Flask(f"test_app_{len(built)}")
        app.config.update({"TESTING": True, "SQLALCHEMY_DATABASE_URI": rl.sqlalchemy_url(dsn)})
        app.config.update(config)
        db = SQLAlchemy()
        db.init_app(app)
        ext = Runledger(app, registry=registry)
        enqueued: list[uuid.UUID] = []
        app.config["ENQUEUED"] = enqueued

        @app.post("/signup")
        def signup() -> tuple[dict[str, str], int]:
            email = "ada@example.com"
            db.session.execute(text("insert into signups (email) values (:e)"), {"e": email})
            enqueued.append(rl.enqueue(db.session, "signup.welcome", {"email": email}))
            db.session.commit()
            return {"job_id": str(enqueued[-1])}, 201

        @app.post("/signup-then-crash")
        def signup_then_crash() -> str:
            email = "crash@example.com"
            db.session.execute(text("insert into signups (email) values (:e)"), {"e": email})
            enqueued.append(rl.enqueue(db.session, "signup.welcome", {"email": email}))
            raise RuntimeError("the view failed after enqueueing")

        @app.get("/")
        def index() -> str:
            return "ok"

        built.append(FlaskApp(app=app, db=db, ext=ext))
        return built[-1]

    yield make
    for item in reversed(built):
        item.ext.close(item.app, timeout=5)
        with item.app.app_context():
            item.db.engine.dispose()


# --- settings --------------------------------------------------------------------------------


def test_sqlalchemy_uri_becomes_a_libpq_url_without_the_psycopg_driver() -> None:
    settings = rl.settings_from_config(
        {"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://app:s3cret@db.internal:5433/shop"}
    )

    assert settings.dsn == "postgresql://app:s3cret@db.internal:5433/shop"
    assert conninfo_to_dict(settings.dsn) == {
        "user": "app",
        "password": "s3cret",
        "host": "db.internal",
        "port": "5433",
        "dbname": "shop",
    }


def test_any_postgres_driver_and_a_sqlalchemy_url_object_are_accepted() -> None:
    url = sqlalchemy.make_url("postgresql+psycopg2://app@db/shop?sslmode=require")

    assert rl.settings_from_config({"SQLALCHEMY_DATABASE_URI": url}).dsn == (
        "postgresql://app@db/shop?sslmode=require"
    )
    assert rl.libpq_dsn("postgres://app@db/shop") == "postgresql://app@db/shop"


def test_runledger_database_url_wins_and_a_key_value_dsn_passes_unchanged() -> None:
    settings = rl.settings_from_config(
        {
            "RUNLEDGER_DATABASE_URL": "host=/run/postgresql dbname=jobs",
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://app@db/shop",
        }
    )

    assert settings.dsn == "host=/run/postgresql dbname=jobs"


def test_a_non_postgres_database_is_refused_naming_the_key_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        rl.settings_from_config({"SQLALCHEMY_DATABASE_URI": "mysql://app:s3cret@db/shop"})

    assert caught.value.name == "SQLALCHEMY_DATABASE_URI"
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ConfigError):
        rl.settings_from_config({"SQLALCHEMY_DATABASE_URI": "sqlite:///app.db"})


def test_no_database_url_is_a_config_error_saying_what_to_set() -> None:
    with pytest.raises(ConfigError) as caught:
        rl.settings_from_config({"RUNLEDGER_DATABASE_URL": ""})

    assert caught.value.name == "RUNLEDGER_DATABASE_URL"
    assert "SQLALCHEMY_DATABASE_URI" in str(caught.value)


def test_options_in_native_types_become_runtime_keyword_arguments() -> None:
    settings = rl.settings_from_config(
        {
            "RUNLEDGER_DATABASE_URL": "dbname=jobs",
            "RUNLEDGER_CONCURRENCY": 4,
            "RUNLEDGER_QUEUES": ["mail", "default"],
            "RUNLEDGER_POLL_INTERVAL": 0.5,
            "RUNLEDGER_LEASE_SECONDS": 10,
            "RUNLEDGER_LISTEN": False,
            "RUNLEDGER_SHUTDOWN_TIMEOUT": 20,
            "RUNLEDGER_RUN_IN_PROCESS": True,
        }
    )

    assert settings.runtime_kwargs() == {
        "concurrency": 4,
        "queues": ("mail", "default"),
        "poll_interval": 0.5,
        "lease_seconds": 10.0,
        "listen": False,
        "shutdown_timeout": 20.0,
    }
    assert settings.run_in_process is True


def test_options_as_strings_from_the_environment_parse_the_same_way() -> None:
    settings = rl.settings_from_config(
        {
            "RUNLEDGER_DATABASE_URL": "dbname=jobs",
            "RUNLEDGER_CONCURRENCY": "4",
            "RUNLEDGER_QUEUES": "mail, default",
            "RUNLEDGER_POLL_INTERVAL": "0.5",
            "RUNLEDGER_LISTEN": "off",
            "RUNLEDGER_RUN_IN_PROCESS": "yes",
        }
    )

    assert settings.concurrency == 4
    assert settings.queues == ("mail", "default")
    assert settings.poll_interval == 0.5
    assert settings.listen is False
    assert settings.run_in_process is True


def test_unset_options_leave_the_runtime_defaults() -> None:
    settings = rl.settings_from_config({"RUNLEDGER_DATABASE_URL": "dbname=jobs"})

    assert settings.runtime_kwargs() == {}
    assert settings.run_in_process is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("RUNLEDGER_CONCURRENCY", 0),
        ("RUNLEDGER_CONCURRENCY", "many"),
        ("RUNLEDGER_CONCURRENCY", True),
        ("RUNLEDGER_POLL_INTERVAL", float("nan")),
        ("RUNLEDGER_QUEUES", []),
        ("RUNLEDGER_QUEUES", {"mail": 1}),
        ("RUNLEDGER_LISTEN", "maybe"),
        ("RUNLEDGER_RUN_IN_PROCESS", "maybe"),
    ],
)
def test_an_option_that_does_not_parse_is_a_config_error_naming_its_key(
    key: str, value: object
) -> None:
    with pytest.raises(ConfigError) as caught:
        rl.settings_from_config({"RUNLEDGER_DATABASE_URL": "dbname=jobs", key: value})

    assert caught.value.name == key


def test_prefetch_is_read_from_the_config() -> None:
    for value, prefetch in ((0, 0), ("12", 12)):
        settings = rl.settings_from_config(
            {"RUNLEDGER_DATABASE_URL": "dbname=jobs", "RUNLEDGER_PREFETCH": value}
        )
        assert settings.prefetch == prefetch
        assert settings.runtime_kwargs() == {"prefetch": prefetch}
    with pytest.raises(ConfigError) as caught:
        rl.settings_from_config({"RUNLEDGER_DATABASE_URL": "dbname=jobs", "RUNLEDGER_PREFETCH": -1})
    assert caught.value.name == "RUNLEDGER_PREFETCH"


def test_every_runtime_variable_of_the_environment_is_a_flask_setting() -> None:
    # "1" parses for every kind of setting: a count, seconds, a flag, a queue name.
    env = dict.fromkeys(RUNTIME_VARIABLES, "1")

    settings = rl.settings_from_config({"RUNLEDGER_DATABASE_URL": "dbname=jobs", **env})

    assert settings.runtime_kwargs() == settings_from_env(env).runtime_kwargs()
    assert set(settings.runtime_kwargs()) == set(RUNTIME_VARIABLES.values())


def test_unsupported_driver_is_a_runledger_error_still_importable_from_the_flask_package() -> None:
    assert rl.UnsupportedDriver is runledger.errors.UnsupportedDriver
    assert issubclass(rl.UnsupportedDriver, runledger.errors.RunledgerError)


def test_init_app_registers_the_extension_and_the_commands_and_refuses_bad_config() -> None:
    app = Flask("settings_only")
    app.config["RUNLEDGER_DATABASE_URL"] = "dbname=jobs"
    ext = Runledger(app)

    assert app.extensions["runledger"] is ext
    assert "runledger" in app.cli.commands
    assert ext.settings(app).dsn == "dbname=jobs"
    assert ext.registry.job_types() == ()
    bad = Flask("bad_settings")
    bad.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    with pytest.raises(ConfigError):
        Runledger(bad)


def test_sqlalchemy_url_reaches_the_same_database_as_the_dsn(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    url = rl.sqlalchemy_url(dsn)
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as sa_conn:
            name = sa_conn.execute(text("select current_database()")).scalar_one()
    finally:
        engine.dispose()
    with psycopg.connect(rl.libpq_dsn(url)) as again:
        same = again.execute("select current_database()").fetchone()

    assert url.startswith("postgresql+psycopg://")
    assert name == conninfo_to_dict(dsn)["dbname"]
    assert same == (name,)


# --- session_connection ----------------------------------------------------------------------


def test_session_connection_is_the_psycopg_connection_of_the_session(dsn: str) -> None:
    engine = sqlalchemy.create_engine(rl.sqlalchemy_url(dsn))
    try:
        with orm.Session(engine) as session:
            pid = session.execute(text("select pg_backend_pid()")).scalar_one()
            conn = rl.session_connection(session)
            with engine.connect() as sa_conn:
                driver = rl.session_connection(sa_conn)
                assert isinstance(driver, psycopg.Connection)
                assert driver is not conn

        assert isinstance(conn, psycopg.Connection)
        assert conn.info.backend_pid == pid
        assert rl.session_connection(conn) is conn
    finally:
        engine.dispose()


def test_session_connection_refuses_another_driver_before_starting_a_transaction() -> None:
    engine = sqlalchemy.create_engine("sqlite://")
    try:
        with orm.Session(engine) as session:
            with pytest.raises(rl.UnsupportedDriver) as caught:
                rl.enqueue(session, "signup.welcome", {"email": "a@b.c"})

            assert not session.in_transaction()
    finally:
        engine.dispose()

    assert isinstance(caught.value, runledger.errors.RunledgerError)
    assert (caught.value.dialect, caught.value.driver) == ("sqlite", "pysqlite")
    assert "postgresql+psycopg://" in str(caught.value)


# --- the session's transaction ---------------------------------------------------------------


def test_a_committed_session_keeps_the_job_and_the_row(
    make_app: Callable[..., FlaskApp], conn: psycopg.Connection[Any]
) -> None:
    fa = make_app()
    with fa.app.app_context():
        fa.db.session.execute(text("insert into signups (email) values ('ada@example.com')"))
        job_id = rl.enqueue(fa.db.session, "signup.welcome", {"email": "ada@example.com"})
        visible_before_commit = job_exists(conn, job_id)
        fa.db.session.commit()

    assert not visible_before_commit
    assert runledger.get_job(conn, job_id).status == runledger.JobStatus.QUEUED
    assert emails(conn) == ["ada@example.com"]


def test_a_rolled_back_session_loses_the_job_and_the_row(
    make_app: Callable[..., FlaskApp], conn: psycopg.Connection[Any]
) -> None:
    fa = make_app()
    with fa.app.app_context():
        fa.db.session.execute(text("insert into signups (email) values ('ada@example.com')"))
        job_id = rl.enqueue(fa.db.session, "signup.welcome", {"email": "ada@example.com"})
        run_id = rl.enqueue_workflow(
            fa.db.session,
            runledger.WorkflowBuilder("signup.flow").step("welcome").job("signup.welcome").build(),
        )
        fa.db.session.rollback()

    assert not job_exists(conn, job_id)
    with pytest.raises(WorkflowRunNotFound):
        runledger.get_workflow_run(conn, run_id)
    assert emails(conn) == []


def test_a_rolled_back_savepoint_loses_only_the_job_enqueued_inside_it(
    make_app: Callable[..., FlaskApp], conn: psycopg.Connection[Any]
) -> None:
    fa = make_app()
    with fa.app.app_context():
        session = fa.db.session
        before = rl.enqueue(session, "signup.welcome", {"email": "before@example.com"})
        nested = session.begin_nested()
        inside = rl.enqueue(session, "signup.welcome", {"email": "inside@example.com"})
        nested.rollback()
        after = rl.enqueue(session, "signup.welcome", {"email": "after@example.com"})
        session.commit()

    assert job_exists(conn, before)
    assert not job_exists(conn, inside)
    assert job_exists(conn, after)


def test_a_committed_workflow_and_a_batch_commit_with_the_session(
    make_app: Callable[..., FlaskApp], conn: psycopg.Connection[Any]
) -> None:
    fa = make_app()
    workflow = (
        runledger.WorkflowBuilder("signup.flow")
        .step("welcome").job("signup.welcome")
        .step("audit").after("welcome").job("signup.audit")
        .build()
    )  # fmt: skip
    with fa.app.app_context():
        run_id = rl.enqueue_workflow(fa.db.session, workflow)
        ids = rl.enqueue_many(
            fa.db.session, [runledger.Job("signup.welcome", {"n": n}) for n in range(3)]
        )
        fa.db.session.commit()

    run = runledger.get_workflow_run(conn, run_id)
    assert [(s.step_key, s.status) for s in run.steps] == [
        ("welcome", runledger.StepStatus.QUEUED),
        ("audit", runledger.StepStatus.BLOCKED),
    ]
    assert all(job_exists(conn, job_id) for job_id in ids)


def test_inside_an_app_the_apps_registry_applies_handler_defaults_and_refuses_unknown_types(
    make_app: Callable[..., FlaskApp], conn: psycopg.Connection[Any]
) -> None:
    fa = make_app()
    with fa.app.app_context():
        job_id = rl.enqueue(fa.db.session, "signup.audit")
        with pytest.raises(UnknownJobType):
            rl.enqueue(fa.db.session, "nobody.handles.this")
        other = runledger.Registry()
        other.handler("nobody.handles.this", queue="elsewhere")(lambda ctx, payload: None)
        explicit = rl.enqueue(fa.db.session, "nobody.handles.this", registry=other)
        fa.db.session.commit()

    job = runledger.get_job(conn, job_id)
    assert (job.queue, job.max_attempts) == ("audit", 7)
    assert runledger.get_job(conn, explicit).queue == "elsewhere"


def test_a_view_that_raises_after_enqueueing_leaves_no_job_and_no_row(
    make_app: Callable[..., FlaskApp], conn: psycopg.Connection[Any]
) -> None:
    fa = make_app(TESTING=False)
    client = fa.app.test_client()

    crashed = client.post("/signup-then-crash")
    ok = client.post("/signup")

    assert crashed.status_code == 500
    assert ok.status_code == 201
    crashed_job, kept_job = fa.app.config["ENQUEUED"]
    assert not job_exists(conn, crashed_job)
    assert job_exists(conn, kept_job)
    assert emails(conn) == ["ada@example.com"]


# --- plain psycopg ---------------------------------------------------------------------------


def test_ext_connection_commits_the_row_and_the_job_together_at_the_end_of_the_block(
    make_app: Callable[..., FlaskApp], conn: psycopg.Connection[Any]
) -> None:
    fa = make_app()
    with fa.app.app_context():
        with fa.ext.connection() as pooled:
            pooled.execute("insert into signups (email) values ('ada@example.com')")
            kept = runledger.enqueue(pooled, "signup.welcome", {"email": "ada@example.com"})
            visible_inside = job_exists(conn, kept)
        with pytest.raises(RuntimeError), fa.ext.connection() as pooled:
            pooled.execute("insert into signups (email) values ('bob@example.com')")
            lost = runledger.enqueue(pooled, "signup.welcome", {"email": "bob@example.com"})
            raise RuntimeError("the block failed")

    assert not visible_inside
    assert job_exists(conn, kept)
    assert not job_exists(conn, lost)
    assert emails(conn) == ["ada@example.com"]


# --- in-process runtime ----------------------------------------------------------------------


def test_the_in_process_runtime_starts_on_the_first_request_and_runs_jobs(
    make_app: Callable[..., FlaskApp], dsn: str
) -> None:
    fa = make_app(
        RUNLEDGER_RUN_IN_PROCESS=True,
        RUNLEDGER_POLL_INTERVAL=0.2,
        RUNLEDGER_LISTEN=False,
        RUNLEDGER_SHUTDOWN_TIMEOUT=5,
    )
    client = fa.app.test_client()
    with fa.app.app_context():
        job_id = rl.enqueue(fa.db.session, "signup.welcome", {"email": "ada@example.com"})
        fa.db.session.commit()
    # No request yet: nothing runs the job.
    assert job_status(dsn, job_id) == runledger.JobStatus.QUEUED

    assert client.get("/").status_code == 200
    wait_until(
        lambda: job_status(dsn, job_id) == runledger.JobStatus.SUCCEEDED,
        timeout=30,
        what="the in-process runtime to run the job",
    )
    first = fa.ext.start_runtime(fa.app)
    assert client.get("/").status_code == 200
    assert fa.ext.start_runtime(fa.app) is first

    fa.ext.close(fa.app, timeout=5)
    assert not any(loop.alive() for loop in first.loops())


def test_the_in_process_runtime_refuses_to_start_on_an_unmigrated_database(
    empty_database: str, registry: runledger.Registry
) -> None:
    app = Flask("unmigrated")
    app.config.update(
        TESTING=True,
        RUNLEDGER_DATABASE_URL=empty_database,
        RUNLEDGER_RUN_IN_PROCESS=True,
        RUNLEDGER_LISTEN=False,
    )
    ext = Runledger(app, registry=registry)

    @app.get("/")
    def index() -> str:
        return "ok"

    try:
        with pytest.raises(SchemaNotMigrated):
            app.test_client().get("/")
        with psycopg.connect(empty_database, autocommit=True) as conn:
            runledger.migrate(conn)
        started = ext.start_runtime(app)

        assert started.loops()[0].alive()
    finally:
        ext.close(app, timeout=5)


# --- flask runledger ... ---------------------------------------------------------------------


def test_flask_runledger_migrate_says_nothing_to_apply_on_a_migrated_database(
    make_app: Callable[..., FlaskApp],
) -> None:
    fa = make_app()

    result = fa.app.test_cli_runner().invoke(args=["runledger", "migrate"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("schema already at version ")
    assert result.output.rstrip().endswith("nothing to apply")


def test_flask_runledger_migrate_installs_the_schema(empty_database: str) -> None:
    app = Flask("to_migrate")
    app.config["RUNLEDGER_DATABASE_URL"] = empty_database
    Runledger(app)

    result = app.test_cli_runner().invoke(args=["runledger", "migrate"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("applied migrations 1")
    with psycopg.connect(empty_database) as conn:
        runledger.check_schema(conn)


def test_flask_runledger_worker_help_lists_its_options(
    make_app: Callable[..., FlaskApp],
) -> None:
    result = make_app().app.test_cli_runner().invoke(args=["runledger", "worker", "--help"])

    assert result.exit_code == 0, result.output
    assert "--concurrency" in result.output
    assert "--queues" in result.output
    assert "SIGTERM" in result.output


def test_flask_runledger_worker_on_an_unmigrated_database_exits_1_saying_to_migrate(
    empty_database: str,
) -> None:
    app = Flask("worker_unmigrated")
    app.config["RUNLEDGER_DATABASE_URL"] = empty_database
    ext = Runledger(app)
    try:
        result = app.test_cli_runner().invoke(args=["runledger", "worker"])
    finally:
        ext.close(app)

    assert result.exit_code == 1
    assert "flask runledger migrate" in result.output


WORKER_APP = """
import os

from flask import Flask

import runledger
from runledger.contrib.flask import Runledger

registry = runledger.Registry()


@registry.handler("greet")
def greet(ctx, payload):
    ctx.conn.execute("insert into greetings (name) values (%s)", [payload["name"]])
    return {"greeted": payload["name"]}


app = Flask(__name__)
app.config["RUNLEDGER_DATABASE_URL"] = os.environ["WORKER_TEST_DSN"]
app.config["RUNLEDGER_POLL_INTERVAL"] = 0.2
app.config["RUNLEDGER_SHUTDOWN_TIMEOUT"] = 10
Runledger(app, registry=registry)
"""


def test_flask_runledger_worker_runs_jobs_until_sigterm_then_exits_0(
    dsn: str, autocommit_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    (tmp_path / "workerapp.py").write_text(textwrap.dedent(WORKER_APP))
    autocommit_conn.execute("create table greetings (name text)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLEDGER_", "FLASK_"))}
    env["WORKER_TEST_DSN"] = dsn
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "flask", "--app", "workerapp",
                "runledger", "worker", "--concurrency", "2", "--queues", "default",
            ],
            cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        job_id = runledger.enqueue(autocommit_conn, "greet", {"name": "ada"})

        def succeeded() -> bool:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited with {worker.returncode}: {err.read_text()}")
            return job_status(dsn, job_id) == runledger.JobStatus.SUCCEEDED

        wait_until(succeeded, timeout=60, what="the worker subprocess to run the job")
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert code == 0, err.read_text()
    assert runledger.get_job(autocommit_conn, job_id).output == {"greeted": "ada"}
    assert autocommit_conn.execute("select name from greetings").fetchall() == [("ada",)]
    assert "Traceback" not in err.read_text()
    assert "stopped" in err.read_text()


HOLD_APP = """
import os

import psycopg
from flask import Flask

import runledger
from runledger.contrib.flask import Runledger

registry = runledger.Registry()


@registry.handler("hold")
def hold(ctx, payload):
    # Waits (a minute at most) for the test to release its advisory lock.
    with psycopg.connect(os.environ["WORKER_TEST_DSN"], autocommit=True) as conn:
        conn.execute("set lock_timeout = '60s'")
        conn.execute("select pg_advisory_lock_shared(4242)")


app = Flask(__name__)
app.config["RUNLEDGER_DATABASE_URL"] = os.environ["WORKER_TEST_DSN"]
app.config["RUNLEDGER_CONCURRENCY"] = 1
app.config["RUNLEDGER_PREFETCH"] = 3
app.config["RUNLEDGER_LEASE_SECONDS"] = 600
app.config["RUNLEDGER_POLL_INTERVAL"] = 0.2
app.config["RUNLEDGER_SHUTDOWN_TIMEOUT"] = 10
Runledger(app, registry=registry)
"""


def test_flask_runledger_worker_takes_prefetch_and_lease_from_the_app_config(
    dsn: str, autocommit_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    (tmp_path / "holdapp.py").write_text(textwrap.dedent(HOLD_APP))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNLEDGER_", "FLASK_"))}
    env["WORKER_TEST_DSN"] = dsn
    autocommit_conn.execute("select pg_advisory_lock(4242)")  # holds every handler
    job_ids = runledger.enqueue_many(autocommit_conn, [runledger.Job("hold")] * 6)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "holdapp", "runledger", "worker"],
            cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip

    def claimed() -> int:
        if worker.poll() is not None:
            pytest.fail(f"the worker exited with {worker.returncode}: {err.read_text()}")
        row = autocommit_conn.execute(
            "select count(*), min(lease_expires_at - now()) from runledger.jobs"
            " where status = 'running'"
        ).fetchone()
        assert row is not None
        leases.append(row[1])
        return int(row[0])

    leases: list[Any] = []
    try:
        # One handler running and three prefetched: RUNLEDGER_CONCURRENCY + RUNLEDGER_PREFETCH
        # (without the prefetch setting the runtime would prefetch one, the concurrency).
        wait_until(lambda: claimed() >= 4, timeout=60, what="the worker to claim four jobs")
        assert claimed() == 4
        # RUNLEDGER_LEASE_SECONDS = 600: a lease the default 30 s could not give.
        assert leases[-1].total_seconds() > 300
        autocommit_conn.execute("select pg_advisory_unlock(4242)")

        def all_succeeded() -> bool:
            done = runledger.JobStatus.SUCCEEDED
            return all(job_status(dsn, job_id) == done for job_id in job_ids)

        wait_until(all_succeeded, timeout=60, what="the worker to run the six jobs")
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert code == 0, err.read_text()


def test_runtime_handlers_run_inside_the_app_context(
    dsn: str, autocommit_conn: psycopg.Connection[Any]
) -> None:
    from flask import Flask, current_app

    app = Flask("ctx_check")
    app.config["RUNLEDGER_DATABASE_URL"] = dsn
    registry = runledger.Registry()
    seen: list[str] = []
    done = threading.Event()

    @registry.handler("flask.ctx")
    def handler(ctx: runledger.JobContext, payload: Any) -> None:
        seen.append(current_app.name)
        done.set()

    ext = Runledger(app, registry=registry)
    runledger.enqueue(autocommit_conn, "flask.ctx")
    with ext.create_runtime(app, concurrency=1, poll_interval=0.1, listen=False):
        assert done.wait(10)
    ext.close(app)
    assert seen == ["ctx_check"]
