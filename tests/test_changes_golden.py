"""Golden cases of the timeline's change derivation (``churn.signals.changes``): input rows,
``as_of``, the window and the kinds asked for in; the exact set of change keys out, and per
change the fields the case names (``summary`` is the sentence the Task's subject carries).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from churn.settings import SignalSettings
from churn.signals.changes import KINDS, derive
from churn.signals.mrr import customers_of
from churn.signals.tables import Tables
from golden_world import cases, load_case, seed

CASES = cases("timeline")


def test_the_timeline_has_at_least_eight_cases() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_timeline_golden(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    case = load_case(path)
    seed(con, case["tables"])
    settings = SignalSettings(**case.get("settings", {}))
    changes = derive(
        Tables(con),
        case["as_of_dt"],
        settings,
        window_days=case.get("window_days", 30),
        kinds=tuple(case.get("kinds", KINDS)),
    )
    got = {c.change_key: c for c in changes}
    assert len(got) == len(changes), "one row per change key"
    want = {e["change_key"]: e for e in case["expected"]}
    assert set(got) == set(want), case["description"]
    for key, exp in want.items():
        change = got[key]
        assert change.occurred_at <= case["as_of_dt"]
        for field, value in exp.items():
            actual = getattr(change, field)
            if field == "occurred_at":
                actual = actual.isoformat()
            assert actual == value, (key, field)
    # derived twice, the same keys: what makes the push idempotent
    again = derive(Tables(con), case["as_of_dt"], settings, window_days=case.get("window_days", 30))
    assert {c.change_key for c in again} >= set(got)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_each_accounts_changes_from_its_own_customers_equal_the_whole_derivations(
    path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    """An incremental run's push derives its accounts' changes from their customers' rows
    only (``customers``): for every account of each case, the same changes as the whole
    derivation gives it; and an empty scope gives no change at all."""
    case = load_case(path)
    seed(con, case["tables"])
    settings = SignalSettings(**case.get("settings", {}))
    as_of, window = case["as_of_dt"], case.get("window_days", 30)
    kinds = tuple(case.get("kinds", KINDS))
    whole = derive(Tables(con), as_of, settings, window_days=window, kinds=kinds)
    accounts = {c.account_id for c in whole}
    assert accounts or not case["expected"]
    for account in accounts:
        customers = [
            r[0] for r in con.execute(customers_of("SELECT $a::VARCHAR"), {"a": account}).fetchall()
        ]
        scoped = derive(
            Tables(con), as_of, settings, window_days=window, kinds=kinds, customers=customers
        )
        assert [c for c in scoped if c.account_id == account] == [
            c for c in whole if c.account_id == account
        ]
    assert derive(Tables(con), as_of, settings, window_days=window, kinds=kinds, customers=[]) == []
