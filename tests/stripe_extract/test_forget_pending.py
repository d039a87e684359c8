"""What a rebuild has done is forgotten by emptying ``stripe_dirty`` whole
(``churn.pipelines.stripe.rebuild.forget_pending``): the table dropped and made again
from its own definition, instead of a ``DELETE`` whose commit takes each row out of the
key's index one at a time (6.4 s of a 10,000-account backfill, 60 s at 100,000).

What must hold is what the ``DELETE`` gave: the table empty, its key still there for the
next landing's ``ON CONFLICT DO NOTHING`` (without a key DuckDB refuses that clause), and
nothing forgotten when the transaction does not commit (a kill before the commit leaves
every pending id for the rerun).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from churn import warehouse
from churn.pipelines.stripe.rebuild import forget_pending
from churn.warehouse import transaction


def _pending(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return con.execute("SELECT stream, id FROM stripe_dirty ORDER BY ALL").fetchall()


def test_forgetting_empties_the_table_and_keeps_its_key(tmp_path: Path) -> None:
    con = warehouse.connect(tmp_path / "w.duckdb")
    con.execute("INSERT INTO stripe_dirty VALUES ('invoice', 'in_1'), ('customer', 'cus_1')")
    with transaction(con):
        forget_pending(con)
    assert _pending(con) == []
    # the landing's statement: needs the key, and the key still refuses a second row
    for _ in range(2):
        con.execute(
            "INSERT INTO stripe_dirty SELECT 'invoice', unnest(['in_2', 'in_2'])"
            " ON CONFLICT DO NOTHING"
        )
    assert _pending(con) == [("invoice", "in_2")]
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO stripe_dirty VALUES ('invoice', 'in_2')")
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO stripe_dirty VALUES (NULL, 'in_3')")
    con.close()
    # and so on reopening (the file holds the table made again, not a leftover)
    con = warehouse.connect(tmp_path / "w.duckdb")
    assert _pending(con) == [("invoice", "in_2")]
    con.close()


def test_nothing_is_forgotten_without_a_commit(tmp_path: Path) -> None:
    con = warehouse.connect(tmp_path / "w.duckdb")
    con.execute("INSERT INTO stripe_dirty VALUES ('invoice', 'in_1'), ('customer', 'cus_1')")
    with pytest.raises(RuntimeError), transaction(con):
        forget_pending(con)
        raise RuntimeError("killed before the commit")
    assert _pending(con) == [("customer", "cus_1"), ("invoice", "in_1")]
    con.close()
