"""account_health with a churn-risk model in force, and without one (the fallback)."""

from __future__ import annotations

import duckdb
import polars as pl

from churn.settings import SignalSettings
from churn.signals import SIGNALS
from churn.signals.health import MODEL_SCORE_SCHEMA, account_health
from churn.signals.mrr import account_mrr
from churn.signals.tables import Tables
from test_score import AS_OF, _world


def _health(con: duckdb.DuckDBPyConnection, model: pl.DataFrame | None) -> dict[str, dict]:
    tables, sig = Tables(con), SignalSettings()
    signals = pl.concat([s.score(tables, AS_OF, sig) for s in SIGNALS])
    mrr = account_mrr(tables, AS_OF, sig)
    rows = account_health(tables, AS_OF, sig, signals, mrr, model).to_dicts()
    return {r["account_id"]: r for r in rows}


def _model(rows: list[tuple[str, float, list[str]]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "account_id": [a for a, _, _ in rows],
            "churn_probability": [p for _, p, _ in rows],
            "reasons": [r for _, _, r in rows],
            "model_version": ["m-1"] * len(rows),
        },
        schema=MODEL_SCORE_SCHEMA,
    )


def test_without_a_model_the_rule_based_score_orders_everything(
    con: duckdb.DuckDBPyConnection,
) -> None:
    _world(con)
    health = _health(con, None)
    for row in health.values():
        assert row["churn_probability"] is None and row["model_version"] is None
        assert row["expected_mrr_at_risk_minor"] == row["mrr_at_risk_minor"]
    assert health["c1"]["expected_mrr_at_risk_minor"] == 1000  # Failed: the whole MRR


def test_a_model_makes_the_risk_score_and_the_expected_mrr_at_risk(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """risk_score is the probability in percent; expected MRR at risk is p x MRR, except
    known churn and Failed, which put the whole MRR at risk whatever the model says."""
    _world(con)
    health = _health(
        con,
        _model(
            [
                ("c1", 0.2, ["Payments failed 3 times in the last 6 months."]),
                ("c3", 0.1, []),
                ("c4", 0.375, ["Seat use fell from 80% to 35% in 60 days.", "Tenure is short."]),
            ]
        ),
    )
    c4 = health["c4"]
    assert c4["churn_probability"] == 0.375 and c4["model_version"] == "m-1"
    assert c4["risk_score"] == 38  # 37.5%, rounded half away from zero
    assert c4["expected_mrr_at_risk_minor"] == 1500  # 4 seats x 1000 x 0.375
    assert c4["top_reasons"][:2] == [
        "Seat use fell from 80% to 35% in 60 days.",
        "Tenure is short.",
    ]
    # Failed and known churn: the whole MRR, the probability kept beside it.
    assert health["c1"]["expected_mrr_at_risk_minor"] == 1000
    assert health["c1"]["risk_score"] == 20
    assert health["c3"]["expected_mrr_at_risk_minor"] == 3000
    # Signal reasons come first; the model's follow.
    assert health["c1"]["top_reasons"][0].startswith("The $10 invoice")
    assert health["c1"]["top_reasons"][1] == "Payments failed 3 times in the last 6 months."
    # An account the model did not score keeps the rule-based numbers.
    assert health["c2"]["churn_probability"] is None
    assert health["c2"]["expected_mrr_at_risk_minor"] == health["c2"]["mrr_at_risk_minor"]
