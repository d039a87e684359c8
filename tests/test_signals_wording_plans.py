"""The reworded reasons read the plans once per score, never across scores."""

from __future__ import annotations

import datetime as dt
import gc
import weakref
from typing import Any

import duckdb
import pytest

from churn.settings import SignalSettings
from churn.signals import seat_utilization
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


def test_nothing_read_outlives_the_score(
    con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What one score shares (plans, seat rows) lives on its Tables instance: once the
    score drops it, nothing holds the rows or the connection (a module-level cache kept
    the last score's rows, at 1,000,000 accounts hundreds of MB, until the next)."""
    seed_two_accounts(con)
    tables = Tables(con)
    plans_at(tables, AS_OF)
    seat_utilization.score(tables, AS_OF, SignalSettings())
    calls: list[str] = []
    read = Tables.frame

    def counted(self: Tables, sql: str, params: Any = None) -> Any:
        calls.append(sql)
        return read(self, sql, params)

    monkeypatch.setattr(Tables, "frame", counted)
    seat_utilization.score(tables, AS_OF, SignalSettings())  # the second signal of the score
    assert calls == []
    gone = weakref.ref(tables)
    del tables
    gc.collect()
    assert gone() is None
