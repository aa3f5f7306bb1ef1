"""``InstallSchema``: the migration operation that applies runledger's SQL migrations."""

from __future__ import annotations

from typing import Any

from django.db import router
from django.db.migrations.operations.base import Operation
from psycopg import pq

from runledger.postgres.migrate import migrate, pending, review_script, schema_version

from .connection import psycopg_connection


class InstallSchema(Operation):
    """Bring the ``runledger`` schema up to date with ``runledger.migrate``.

    Idempotent: a schema already installed by ``runledger migrate`` (or an earlier run) is
    left as it is, and a newer one is completed. Runs on every PostgreSQL database the
    routers allow this app to migrate; other vendors are skipped. Each runledger release
    that ships new SQL adds a Django migration with this operation, so ``manage.py migrate``
    keeps the schema current. Reversing it leaves the schema in place (it holds the ledger):
    drop it yourself with ``DROP SCHEMA runledger CASCADE``.
    """

    reversible = True
    # sqlmigrate collects the runledger SQL pending on its database (see database_forwards).
    reduces_to_sql = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        """No model state: the tables are runledger's."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Apply the pending SQL migrations on the migrating connection.

        Under ``manage.py sqlmigrate`` (a schema editor collecting SQL) apply nothing: read
        which runledger migrations are pending on that database now, and add their SQL to
        what it prints, each file after a comment naming it.

        Raises:
            MigrationError: a migration failed, or an applied one differs from the shipped
                file.
        """
        wrapper = schema_editor.connection
        if wrapper.vendor != "postgresql" or not router.allow_migrate(wrapper.alias, app_label):
            return
        conn = psycopg_connection(wrapper.alias)
        if schema_editor.collect_sql:
            schema_editor.collected_sql.append(
                f"-- The runledger SQL migrations pending on database {wrapper.alias!r} now.\n"
                "-- This operation applies every one of them, each in its own transaction."
            )
            todo = pending(conn)
            schema_editor.collected_sql.append(review_script(todo, schema_version(conn)).rstrip())
            return
        if not conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
            # Inside Django's atomic block with nothing executed yet: psycopg would treat
            # migrate's transaction blocks as the outermost one and commit them. Start
            # Django's transaction, so they become savepoints in it.
            schema_editor.execute("select 1")
        migrate(conn)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        """Leave the schema: it holds the ledger."""

    def describe(self) -> str:
        """What ``manage.py migrate --plan`` and ``sqlmigrate`` print."""
        return "Install or upgrade the runledger schema (runledger.migrate)"

    @property
    def migration_name_fragment(self) -> str:
        """For ``makemigrations`` names."""
        return "runledger_schema"

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        """How migration files spell this operation."""
        return (f"{__name__}.{type(self).__qualname__}", [], {})
