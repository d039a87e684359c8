"""The top reason agrees with Payment Health (what lands in Churn_Top_Reason__c)."""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from churn.settings import SignalSettings
from churn.signals import SIGNAL_SCHEMA
from churn.signals.health import account_health
from churn.signals.tables import Tables

AS_OF = datetime(2026, 3, 1)  # noqa: DTZ001 (naive UTC, as the warehouse stores it)


def _signals(rows: list[tuple[str, str, float, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "account_id": a,
                "signal": s,
                "score": score,
                "severity": "high",
                "reason": reason,
                "evidence": '{"kind": "expires_before_renewal"}',
                "as_of": AS_OF,
                "episode_key": f"{s}:{a}",
            }
            for a, s, score, reason in rows
        ],
        schema=SIGNAL_SCHEMA,
    )


def test_a_failed_account_leads_with_its_failed_payment_not_a_higher_card_expiry(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Before, reasons were ranked by signal score: a card expiring (0.9) came before the
    failed invoice (0.5) on an Account whose Payment Health is ``Failed``, and the card's
    sentence became Churn_Top_Reason__c."""
    signals = _signals(
        [
            ("001A", "card_expiry", 0.9, "The card ending 4242 expires 02/2026."),
            ("001A", "payment_failure", 0.5, "Payment failed: the $100 invoice is unpaid."),
            ("001A", "downgrade", 1.0, "MRR fell 60%."),
            ("001B", "downgrade", 0.9, "MRR fell 50%."),
            ("001B", "card_expiry", 0.6, "The card ending 1111 expires 03/2026."),
            ("001C", "downgrade", 1.0, "MRR fell 70%."),
            ("001C", "cancel_at_period_end", 0.8, "Pro plan cancels on 2026-04-01."),
        ]
    )
    mrr = pl.DataFrame(schema={"account_id": pl.String, "reporting_mrr_minor": pl.Int64})
    rows = account_health(Tables(con), AS_OF, SignalSettings(), signals, mrr)
    got = {r["account_id"]: r for r in rows.iter_rows(named=True)}
    assert got["001A"]["payment_health"] == "Failed"
    assert got["001A"]["top_reasons"][0].startswith("Payment failed")
    # At Risk (card expiry) leads with the card; the downgrade follows
    assert got["001B"]["payment_health"] == "At Risk"
    assert got["001B"]["top_reasons"] == [
        "The card ending 1111 expires 03/2026.",
        "MRR fell 50%.",
    ]
    # known churn comes before a higher-scored downgrade
    assert got["001C"]["top_reasons"][0].startswith("Pro plan cancels")


def test_tied_reasons_come_in_one_order_whatever_order_the_signals_arrive_in(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Two signals of one rank and score (two failed invoices, a downgrade and a seat
    drop scored alike): the frames come from parallel queries in no set order, and a top
    reason that followed them changed Churn_Top_Reason__c on a rerun over the same data
    (an Account update no one needed: the demo's rerun check caught it in CI)."""
    rows = [
        ("001A", "payment_failure", 0.7, "Payment failed: the $100 invoice is unpaid."),
        ("001A", "payment_failure", 0.7, "Payment failed: the $250 invoice is unpaid."),
        ("001B", "seat_utilization", 0.5, "Seat use fell from 80% to 35%."),
        ("001B", "downgrade", 0.5, "MRR fell 40%."),
    ]
    mrr = pl.DataFrame(schema={"account_id": pl.String, "reporting_mrr_minor": pl.Int64})
    seen = [
        {
            r["account_id"]: r["top_reasons"]
            for r in account_health(
                Tables(con), AS_OF, SignalSettings(), _signals(order), mrr
            ).iter_rows(named=True)
        }
        for order in (rows, rows[::-1])
    ]
    assert seen[0] == seen[1]
    assert seen[0]["001B"] == ["MRR fell 40%.", "Seat use fell from 80% to 35%."]
