"""The two seat signals read the usage and the seats once per score (one statement gives
both signals' rows). The shared read must give each signal the rows its own statement
gives, on every golden case of both signals; and a new score reads again."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from churn.settings import SignalSettings
from churn.signals import seat_utilization as su
from churn.signals.tables import Tables
from golden_world import cases, load_case, seed

CASES = [*cases(su.NAME), *cases(su.EXPANSION)]


def _sorted(frame: pl.DataFrame) -> list[dict[str, object]]:
    return frame.sort("account_id").to_dicts()


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_one_read_gives_each_signal_its_own_rows(
    path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    case = load_case(path)
    seed(con, case["tables"])
    settings = SignalSettings(**case.get("settings", {}))
    tables = Tables(con)
    as_of = case["as_of_dt"]
    both = su._both(tables, as_of, settings)
    low = tables.frame(su._LOW, su._params(as_of, settings, "low"))
    expansion = tables.frame(su._EXPANSION, su._params(as_of, settings, "high"))
    assert _sorted(both.filter(pl.col("kind") == "low").drop("kind")) == _sorted(low)
    assert _sorted(both.filter(pl.col("kind") == "expansion").drop("kind")) == _sorted(expansion)
    # the second signal of the score takes the same read; a new score reads again
    assert su._both(tables, as_of, settings) is both
    assert su._both(Tables(con), as_of, settings) is not both
