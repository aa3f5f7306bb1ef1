"""The migrated schema agrees with core: status CHECKs mirror the StrEnums; every query plans."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import psycopg
import pytest

import runledger.postgres
from runledger.core.status import (
    AttemptOutcome,
    EventKind,
    JobStatus,
    ReleaseMode,
    RetryReason,
    RunStatus,
    StepKind,
    StepStatus,
)
from runledger.testing import TemplateDatabases


@pytest.fixture(scope="module")
def schema(databases: TemplateDatabases) -> Iterator[psycopg.Connection[Any]]:
    """One migrated database for the whole module: these tests only read or roll back."""
    with databases.database() as dsn, psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


# (table, column) -> the StrEnum whose values its single-column CHECK must allow, exactly.
CHECKED_COLUMNS: list[tuple[str, str, type[StrEnum]]] = [
    ("jobs", "status", JobStatus),
    ("workflow_step_runs", "status", StepStatus),
    ("workflow_runs", "status", RunStatus),
    ("job_attempts", "outcome", AttemptOutcome),
    ("job_attempts", "retry_reason", RetryReason),
    ("events", "kind", EventKind),
    ("workflow_step_runs", "kind", StepKind),
    ("workflow_step_deps", "release_mode", ReleaseMode),
]

# The CHECK constraints that mention only this column (not e.g. "finished_at is null = ...").
SINGLE_COLUMN_CHECKS = """
select pg_get_constraintdef(c.oid)
from pg_constraint c
join pg_attribute a on a.attrelid = c.conrelid and a.attnum = c.conkey[1]
where c.contype = 'c'
  and c.conrelid = format('runledger.%%I', %(table)s::text)::regclass
  and cardinality(c.conkey) = 1
  and a.attname = %(column)s
"""


@pytest.mark.parametrize(
    ("table", "column", "enum"),
    CHECKED_COLUMNS,
    ids=[f"{t}.{c}" for t, c, _ in CHECKED_COLUMNS],
)
def test_check_constraint_allows_exactly_the_enum_values(
    schema: psycopg.Connection[Any], table: str, column: str, enum: type[StrEnum]
) -> None:
    rows = schema.execute(SINGLE_COLUMN_CHECKS, {"table": table, "column": column}).fetchall()

    assert len(rows) == 1, rows
    (definition,) = rows[0]
    allowed = set(re.findall(r"'([^']*)'::text", definition))
    assert allowed == {member.value for member in enum}, definition


def test_runnable_jobs_have_a_partial_index(schema: psycopg.Connection[Any]) -> None:
    row = schema.execute(
        "select indexdef from pg_indexes where schemaname = 'runledger' "
        "and indexname = 'jobs_runnable'"
    ).fetchone()

    assert row is not None
    assert "WHERE (status = 'queued'" in row[0]


def test_every_table_of_the_design_exists(schema: psycopg.Connection[Any]) -> None:
    tables = {
        row[0]
        for row in schema.execute(
            "select table_name from information_schema.tables where table_schema = 'runledger'"
        ).fetchall()
    }

    assert {
        "jobs",
        "job_attempts",
        "workflow_runs",
        "workflow_step_runs",
        "workflow_step_deps",
        "schedules",
        "events",
        "schema_migrations",
    } <= tables


def _sql_constants() -> list[tuple[str, str]]:
    """Every module-level UPPER_CASE str naming a runledger table, in every postgres module
    (a _PRIVATE one is a fragment, checked in the statements built of it)."""
    found = []
    for info in pkgutil.iter_modules(runledger.postgres.__path__):
        module = importlib.import_module(f"runledger.postgres.{info.name}")
        for name, value in vars(module).items():
            public = name.isupper() and not name.startswith("_")
            if public and isinstance(value, str) and "runledger." in value:
                found.append((f"{info.name}.{name}", value))
    return found


SQL_CONSTANTS = _sql_constants()
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
VACUUM = re.compile(r"^\s*vacuum\b", re.IGNORECASE)
COPY = re.compile(r"^\s*copy\b", re.IGNORECASE)
DML = re.compile(r"^\s*(select|insert|update|delete|with|values)\b", re.IGNORECASE)


def test_the_foundation_queries_are_among_the_constants_checked() -> None:
    names = {name for name, _ in SQL_CONSTANTS}

    assert {
        "enqueue.INSERT_JOBS",
        "enqueue.EXISTING_JOBS",
        "enqueue.INSERT_RUN",
        "enqueue.EXISTING_RUN",
        "enqueue.INSERT_RUN_STEPS",
        "reads.GET_JOB",
        "reads.LIST_JOBS",
        "reads.GET_RUN",
        "reads.LIST_STEPS",
        "reads.LIST_EDGES",
        "reads.LIST_EVENTS",
        "migrate.BOOTSTRAP",
        "migrate.APPLIED",
        "migrate.RECORD",
    } <= names


@pytest.mark.parametrize(("name", "query"), SQL_CONSTANTS, ids=[n for n, _ in SQL_CONSTANTS])
def test_sql_constant_parses_and_plans_against_the_migrated_schema(
    schema: psycopg.Connection[Any], name: str, query: str
) -> None:
    params = {placeholder: None for placeholder in PLACEHOLDER.findall(query)}

    if VACUUM.match(query):
        # VACUUM cannot run inside a transaction; it only cleans, so run it for real.
        with psycopg.connect(schema.info.dsn, autocommit=True) as conn:
            conn.execute(query)
        return

    with schema.transaction(force_rollback=True):
        if COPY.match(query):
            # COPY cannot be explained: copy zero rows, which checks the table and columns.
            with schema.cursor() as cur, cur.copy(query):
                pass
        elif DML.match(query):
            # EXPLAIN parses, analyses and plans the statement (data-modifying CTEs included)
            # without running it.
            schema.execute(f"explain {query}", params or None)
        else:
            # DDL (the migrator's bootstrap) cannot be explained; run it and roll back.
            schema.execute(query, params or None)
