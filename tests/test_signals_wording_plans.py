"""The reworded reasons read the plans once per score, never across scores."""

from __future__ import annotations

import datetime as dt

import duckdb

from churn.signals.tables import Tables
from churn.signals.wording import plans_at
from golden_world import seed_two_accounts

AS_OF = dt.datetime.fromisoformat("2026-02-15")


def test_plans_are_read_once_per_score_and_again_for_a_new_one(
    con: duckdb.DuckDBPyConnection,
) -> None:
    seed_two_accounts(con)
    tables = Tables(con)
    first = plans_at(tables, AS_OF)
    assert plans_at(tables, AS_OF) is first  # the four worded signals of one score
    assert plans_at(tables, AS_OF + dt.timedelta(days=1)) is not first  # another date
    # a new score (a new Tables) reads again: data may have landed in between
    con.execute("UPDATE history_subscription_items SET quantity = 7 WHERE item_id = 'si1'")
    again = plans_at(Tables(con), AS_OF)
    assert again is not first
    assert again.subscription("s1")[1] == 7 and first.subscription("s1")[1] == 1
