from typing import Any
import psycopg

def test_fixture(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("select count(*) from runledger.jobs").fetchone() == (0,)
