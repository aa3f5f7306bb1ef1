"""Schema migrations: numbered SQL files applied once each, in order, under an advisory lock.

The files live in ``sql/`` at the top of the source tree and ship in the wheel as
``runledger/sql``. Each file is applied in its own transaction, which first takes
``pg_advisory_xact_lock`` so that concurrent migrators apply it exactly once, and records its
version and checksum in ``runledger.schema_migrations``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg

from runledger.errors import MigrationError, SchemaNotMigrated

# An arbitrary constant shared by every runledger migrator (b"runledgr" as a big-endian int).
MIGRATION_LOCK_KEY = 0x72756E6C65646772 - 2**63

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

BOOTSTRAP = """
create schema if not exists runledger;
create table if not exists runledger.schema_migrations (
    version    integer primary key,
    name       text not null,
    checksum   text not null,
    applied_at timestamptz not null default now()
)
"""
LOCK = "select pg_advisory_xact_lock(%(key)s)"
APPLIED = "select version, name, checksum from runledger.schema_migrations order by version"
RECORD = """
insert into runledger.schema_migrations (version, name, checksum)
values (%(version)s, %(name)s, %(checksum)s)
"""
HAS_TABLE = "select to_regclass('runledger.schema_migrations') is not null"
CURRENT_VERSION = "select max(version) from runledger.schema_migrations"


@attrs.frozen(kw_only=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def _sql_dir() -> Path:
    shipped = importlib.resources.files("runledger") / "sql"
    if shipped.is_dir():
        return Path(str(shipped))
    # A source checkout (editable install): the files sit beside the package.
    return Path(__file__).resolve().parents[2] / "sql"


def migrations() -> tuple[Migration, ...]:
    """The migrations this version of runledger ships, in order."""
    found = []
    for path in sorted(_sql_dir().iterdir()):
        match = _FILE_NAME.match(path.name)
        if match:
            found.append(
                Migration(version=int(match[1]), name=path.name, sql=path.read_text("utf-8"))
            )
    return tuple(found)


def latest_version() -> int:
    """The version the newest shipped migration brings the schema to."""
    return migrations()[-1].version


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Bring the ``runledger`` schema up to date; return the versions applied now.

    Idempotent and safe to run from several processes at once. Each migration runs in its own
    transaction (a savepoint if ``conn`` is already inside one, which the caller then commits).
    Blocks while another process holds the migration lock.

    Raises:
        MigrationError: a migration failed (its transaction is rolled back), or an applied
            migration's checksum differs from the shipped file.
    """
    applied_now: list[int] = []
    for migration in migrations():
        with conn.transaction():
            conn.execute(LOCK, {"key": MIGRATION_LOCK_KEY})
            conn.execute(BOOTSTRAP)
            applied = {row[0]: row[2] for row in conn.execute(APPLIED).fetchall()}
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        version=migration.version,
                        name=migration.name,
                        reason="the applied migration differs from the shipped file "
                        "(edited after it was applied?)",
                    )
                continue
            try:
                with conn.transaction():
                    conn.execute(migration.sql.encode())
            except psycopg.Error as err:
                raise MigrationError(
                    version=migration.version, name=migration.name, reason=str(err)
                ) from err
            conn.execute(
                RECORD,
                {
                    "version": migration.version,
                    "name": migration.name,
                    "checksum": migration.checksum,
                },
            )
            applied_now.append(migration.version)
    return applied_now


def pending(conn: psycopg.Connection[Any]) -> tuple[Migration, ...]:
    """The shipped migrations that ``migrate`` would apply to ``conn``'s database, in order.

    Reads ``runledger.schema_migrations`` and writes nothing: a database without the runledger
    schema has every migration pending, and no schema is created. Takes no lock, so another
    migrator may apply some of them right after. Runs in ``conn``'s transaction when it is in
    one (its own short one in autocommit mode); blocks only on the database. Versions applied
    by a newer runledger, which this one does not ship, are not reported.

    Raises:
        MigrationError: an applied migration differs from the file this runledger ships (edited
            after it was applied, or applied by another version).
    """
    shipped = migrations()
    exists = conn.execute(HAS_TABLE).fetchone()
    if not exists or not exists[0]:
        return shipped
    applied = {row[0]: row[2] for row in conn.execute(APPLIED).fetchall()}
    for migration in shipped:
        if migration.version in applied and applied[migration.version] != migration.checksum:
            raise MigrationError(
                version=migration.version,
                name=migration.name,
                reason="the applied migration differs from the file this runledger ships "
                "(edited after it was applied, or applied by another version)",
            )
    return tuple(m for m in shipped if m.version not in applied)


def review_script(todo: Sequence[Migration], current: int | None) -> str:
    """The SQL of ``todo`` for a person to review: each file after a comment line naming it.

    ``current`` is the database's schema version, named by the one comment line returned when
    nothing is pending. Run as one script the text builds what ``migrate`` would, but records
    nothing in ``runledger.schema_migrations``: apply migrations with ``migrate``.
    """
    if not todo:
        return f"-- no pending migrations: the runledger schema is at version {current}\n"
    return "".join(header(m) + "\n" + m.sql.rstrip() + "\n\n" for m in todo)


def header(migration: Migration) -> str:
    """The SQL comment line that names ``migration`` in a review script."""
    return f"-- runledger migration {migration.version}: {migration.name}"


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The newest applied migration, or None when the schema is not installed."""
    exists = conn.execute(HAS_TABLE).fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(CURRENT_VERSION).fetchone()
    return None if row is None else row[0]


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise unless the schema is at the shipped version, from the shipped files.

    Raises:
        SchemaNotMigrated: the schema is missing or older; run ``runledger migrate``.
        MigrationError: an applied migration differs from the file this version ships.
    """
    found = schema_version(conn)
    expected = latest_version()
    if found is None or found < expected:
        raise SchemaNotMigrated(found=found, expected=expected)
    applied = {row[0]: row[2] for row in conn.execute(APPLIED).fetchall()}
    for migration in migrations():
        if applied.get(migration.version) != migration.checksum:
            raise MigrationError(
                version=migration.version,
                name=migration.name,
                reason="the applied migration differs from the file this runledger ships; "
                "the database was migrated by another version",
            )
