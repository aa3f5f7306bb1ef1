"""Statement text as sent: comments out, literals intact, and the per-job statements short
enough for psycopg to cache its conversion of them."""

from __future__ import annotations

import pytest
from psycopg import _queries

from runledger.postgres import attempts
from runledger.postgres.sqltext import PSYCOPG_CACHED_LENGTH, compact, positional


def test_compact_drops_comments_blank_lines_and_indentation() -> None:
    sql = """
    -- the whole line goes
    select a,   -- a trailing comment goes
           b

    from t  where x = %(x)s
    """
    assert compact(sql) == "select a,\nb\nfrom t  where x = %(x)s\n"


def test_compact_keeps_dashes_inside_literals() -> None:
    sql = "select '--not a comment', 'it''s -- kept' -- gone\nfrom t"
    assert compact(sql) == "select '--not a comment', 'it''s -- kept'\nfrom t\n"


def test_our_limit_is_psycopgs() -> None:
    assert _queries.MAX_CACHED_STATEMENT_LENGTH == PSYCOPG_CACHED_LENGTH


def test_the_statements_run_for_every_job_fit_psycopgs_cache() -> None:
    for name in ("FINISH_ATTEMPTS", "FINISH_FEW_ATTEMPTS", "MARK_STARTED", "RENEW_LEASES"):
        text = getattr(attempts, name)
        assert len(text.encode()) <= PSYCOPG_CACHED_LENGTH, name


def test_the_claim_is_numbered_once_because_it_does_not_fit() -> None:
    assert len(attempts.CLAIM_JOBS.encode()) > PSYCOPG_CACHED_LENGTH
    statement = attempts.CLAIM_STATEMENT
    assert "%(" not in statement.text
    params = attempts.claim_params(
        worker="w", queues=["q"], job_types=["t"], limit=3, lease_seconds=30.0
    )
    assert sorted(statement.names) == sorted(params)
    assert statement.args(params)[statement.names.index("limit")] == 3


def test_positional_numbers_names_in_order_of_first_use() -> None:
    statement = positional("select %(b)s, %(a)s, %(b)s, 10 %% 3")
    assert statement.text == "select $1, $2, $1, 10 % 3"
    assert statement.names == ("b", "a")
    assert statement.args({"a": 1, "b": 2, "unused": 3}) == [2, 1]


def test_positional_refuses_a_lone_percent() -> None:
    with pytest.raises(ValueError, match="lone %"):
        positional("select 10 % 3")
