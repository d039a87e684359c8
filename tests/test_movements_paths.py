"""MRR movements take the changed months from a join of consecutive points
(:func:`churn.signals.mrr.changed_months_sql`) instead of a window over a grid of every
account at every point. The faster path must classify to the same movements, exactly:
the grid's SQL is kept here as the reference, both run over the same random MRR rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churn.signals.mrr import changed_months_sql, classify_movements

#: The reference: movements' SQL before the change (a grid of accounts x points, lag()).
GRID_SQL = """
  WITH m AS (SELECT * FROM mrr_rows),
  acc AS (
    SELECT account_id, t, sum(reporting_mrr_minor) AS mrr,
           bool_or(reporting_mrr_minor IS NULL) AS missing
    FROM m GROUP BY ALL
  ),
  grid AS (
    SELECT a.account_id, p.t FROM (SELECT DISTINCT account_id FROM acc) a
    CROSS JOIN (SELECT t FROM points) p
  ),
  filled AS (
    SELECT g.account_id, g.t, COALESCE(acc.mrr, 0) AS mrr, COALESCE(acc.missing, FALSE) AS missing
    FROM grid g LEFT JOIN acc USING (account_id, t)
  ),
  bounds AS (
    SELECT account_id, CAST(date_trunc('month', t) AS DATE) AS month, lag(t) OVER w AS prev_t,
           lag(mrr) OVER w AS start_mrr, mrr AS end_mrr,
           bool_or(missing) OVER (PARTITION BY account_id) AS any_missing
    FROM filled WINDOW w AS (PARTITION BY account_id ORDER BY t)
  )
  SELECT account_id, month, CAST(start_mrr AS BIGINT) AS start_mrr_minor,
         CAST(end_mrr AS BIGINT) AS end_mrr_minor
  FROM bounds WHERE prev_t IS NOT NULL AND NOT any_missing
"""

#: Month ends (just before each month start) and a last point mid-month, as movements() takes.
# (naive UTC, as the warehouse stores it)
POINTS = [
    datetime.fromisoformat(f"2025-{1 + k:02d}-01") - timedelta(microseconds=1) for k in range(8)
] + [datetime.fromisoformat("2025-08-17T09:30")]


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE points (t TIMESTAMP)")
    connection.executemany("INSERT INTO points VALUES (?)", [[t] for t in POINTS])
    connection.execute(
        "CREATE TABLE mrr_rows (account_id VARCHAR, t TIMESTAMP, reporting_mrr_minor BIGINT)"
    )
    yield connection
    connection.close()


def _movements(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    frame = pl.from_arrow(con.sql(sql).to_arrow_table())
    assert isinstance(frame, pl.DataFrame)
    return classify_movements(frame).sort("account_id", "month")


# per account and point: no row (nothing in force), an amount (0 too: a trial), or NULL (no
# rate); two rows at one point (two currencies) add up
amount: st.SearchStrategy[int | None] = st.one_of(
    st.none(), st.integers(0, 3), st.sampled_from([0, 1000, 2500])
)
cell: st.SearchStrategy[list[int | None]] = st.one_of(
    st.just([]), st.lists(amount, min_size=1, max_size=2)
)


@settings(max_examples=150, deadline=None)
@given(series=st.lists(st.lists(cell, min_size=len(POINTS), max_size=len(POINTS)), max_size=6))
def test_changed_months_classify_as_the_grid(
    con: duckdb.DuckDBPyConnection, series: list[list[list[Any]]]
) -> None:
    con.execute("DELETE FROM mrr_rows")
    rows = [
        [f"acc_{a}", POINTS[k], v]
        for a, cells in enumerate(series)
        for k, values in enumerate(cells)
        for v in values
    ]
    if rows:
        con.executemany("INSERT INTO mrr_rows VALUES (?, ?, ?)", rows)
    new = _movements(con, changed_months_sql("SELECT * FROM mrr_rows", "SELECT t FROM points"))
    old = _movements(con, GRID_SQL)
    assert new.to_dicts() == old.to_dicts()


def test_a_churn_then_a_reactivation_keeps_its_history(con: duckdb.DuckDBPyConnection) -> None:
    """Unchanged months are not returned; the month that starts at zero after a churn is
    still a reactivation (the churn month before it is a changed month), not new."""
    con.execute("DELETE FROM mrr_rows")
    values = [1000, 1000, 1000, None, None, 1000, 1000, 1000, 1000]  # None: no row
    con.executemany(
        "INSERT INTO mrr_rows VALUES ('a', ?, ?)",
        [[t, v] for t, v in zip(POINTS, values, strict=True) if v is not None],
    )
    new = _movements(con, changed_months_sql("SELECT * FROM mrr_rows", "SELECT t FROM points"))
    assert new["movement"].to_list() == ["churn", "reactivation"]
    assert new.to_dicts() == _movements(con, GRID_SQL).to_dicts()
