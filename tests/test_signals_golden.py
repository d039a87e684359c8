"""Golden cases: one data file per case (input rows, as_of, expected rows), one test.

Signal cases compare the set of episodes exactly and, per episode, the fields the case
names (score within 1e-6, evidence as a subset). MRR cases compare ``account_mrr`` rows
and, when given, ``mrr_movements`` rows exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from churn.settings import SignalSettings
from churn.signals import SIGNAL_SCHEMA, SIGNALS
from churn.signals.mrr import account_mrr, movements
from churn.signals.tables import Tables
from golden_world import cases, load_case, seed

SIGNAL_NAMES = [s.name for s in SIGNALS]
BY_NAME = {s.name: s for s in SIGNALS}

SIGNAL_CASES = [p for name in SIGNAL_NAMES for p in cases(name)]
MRR_CASES = cases("mrr")


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


def test_every_signal_and_the_mrr_engine_have_at_least_eight_cases() -> None:
    counts = {name: len(cases(name)) for name in [*SIGNAL_NAMES, "mrr"]}
    assert all(n >= 8 for n in counts.values()), counts


@pytest.mark.parametrize("path", SIGNAL_CASES, ids=_id)
def test_signal_golden(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    case = load_case(path)
    seed(con, case["tables"])
    settings = SignalSettings(**case.get("settings", {}))
    rows = BY_NAME[path.parent.name].score(Tables(con), case["as_of_dt"], settings)

    assert rows.schema == pl.Schema(SIGNAL_SCHEMA)
    assert set(rows["as_of"].to_list()) <= {case["as_of_dt"]}
    assert rows["episode_key"].n_unique() == rows.height
    got = {r["episode_key"]: r for r in rows.iter_rows(named=True)}
    want = {e["episode_key"]: e for e in case["expected"]}
    assert set(got) == set(want), case["description"]
    for key, exp in want.items():
        actual = got[key]
        assert actual["reason"], "every row needs a readable reason"
        assert 0.0 <= actual["score"] <= 1.0
        for field, value in exp.items():
            if field == "score":
                assert actual["score"] == pytest.approx(value, abs=1e-6), key
            elif field == "evidence":
                evidence = json.loads(actual["evidence"])
                assert {k: evidence.get(k) for k in value} == value, key
            elif field == "reason_contains":
                assert value in actual["reason"], key
            else:
                assert actual[field] == value, (key, field)


def _rows(frame: pl.DataFrame, cols: list[str]) -> list[dict[str, Any]]:
    return sorted(
        (
            {c: (str(v) if c == "month" else v) for c, v in r.items()}
            for r in frame.select(cols).iter_rows(named=True)
        ),
        key=lambda r: json.dumps(r, sort_keys=True, default=str),
    )


@pytest.mark.parametrize("path", MRR_CASES, ids=_id)
def test_mrr_golden(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    case = load_case(path)
    seed(con, case["tables"])
    settings = SignalSettings(**case.get("settings", {}))
    tables = Tables(con)
    expected = case["expected"]
    got = account_mrr(tables, case["as_of_dt"], settings)
    cols = ["account_id", "currency", "mrr_minor", "reporting_mrr_minor"]
    assert _rows(got, cols) == sorted(
        expected, key=lambda r: json.dumps(r, sort_keys=True, default=str)
    ), case["description"]
    if "expected_movements" in case:
        moves = movements(tables, case["as_of_dt"], settings)
        want = case["expected_movements"]
        mcols = ["account_id", "month", "movement", "amount_minor"]
        assert _rows(moves, mcols) == sorted(
            want, key=lambda r: json.dumps(r, sort_keys=True, default=str)
        ), case["description"]


FEATURE_CASES = cases("model_features")


def test_the_model_features_have_at_least_eight_cases() -> None:
    assert len(FEATURE_CASES) >= 8


@pytest.mark.parametrize("path", FEATURE_CASES, ids=_id)
def test_model_features_golden(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """The churn model's point-in-time features: per expected account, the named columns
    (``null`` is NaN: a value unknown at the snapshot); ``absent`` accounts are not live."""
    import math

    from churn.signals.model.features import compute_features

    case = load_case(path)
    seed(con, case["tables"])
    settings = SignalSettings(**case.get("settings", {}))
    frame = compute_features(Tables(con), [case["as_of_dt"]], settings, case.get("horizon", 90))
    rows = {r["account_id"]: r for r in frame.iter_rows(named=True)}
    assert set(rows) >= {e["account_id"] for e in case["expected"]}, case["description"]
    assert not set(case.get("absent", [])) & set(rows), case["description"]
    for exp in case["expected"]:
        got = rows[exp["account_id"]]
        for col, value in exp.items():
            if value is None:
                assert math.isnan(got[col]), (exp["account_id"], col, got[col])
            elif isinstance(value, bool | str):
                assert got[col] == value, (exp["account_id"], col)
            else:
                assert got[col] == pytest.approx(value, abs=1e-3), (exp["account_id"], col)
