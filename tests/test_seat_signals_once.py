"""The two seat signals and the usage they cannot use (the run's usage gaps) read the usage
and the seats once per score (one statement gives all three's rows). The shared read must
give each the rows its own statement gives, on every golden case of both signals; and a
new score reads again."""

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
def test_one_read_gives_each_signal_and_the_gaps_their_own_rows(
    path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    case = load_case(path)
    seed(con, case["tables"])
    settings = SignalSettings(**case.get("settings", {}))
    tables = Tables(con)
    as_of = case["as_of_dt"]
    reads: list[str] = []
    frame = Tables.frame

    def counted(self: Tables, sql: str, params: object = None) -> pl.DataFrame:
        reads.append(sql)
        return frame(self, sql, params)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Tables, "frame", counted)
        shared = {
            kind: su._all(tables, as_of, settings, kind) for kind in ("low", "expansion", "gap")
        }
        assert reads == [su._ALL]  # the three kinds, one statement
        # a new score reads again
        su._all(Tables(con), as_of, settings, "low")
        assert len(reads) == 2
    low = tables.frame(su._LOW, su._params(as_of, settings, "low"))
    expansion = tables.frame(su._EXPANSION, su._params(as_of, settings, "high"))
    gaps = tables.frame(su._UNSUPPORTED, su._params(as_of, settings))
    assert _sorted(shared["low"]) == _sorted(low)
    assert _sorted(shared["expansion"]) == _sorted(expansion)
    assert _sorted(shared["gap"]) == _sorted(gaps)
    assert shared["gap"].schema == gaps.schema
    assert shared["low"].schema == low.schema
