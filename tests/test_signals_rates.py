"""Currency rates as of a date (churn.signals.rates): dated rates, then rates as seen,
then today's CurrencyType.

Salesforce's DatedConversionRate: "Use this object to define the exchange rates your
organization uses for a date range"; NextStartDate is "the date on which the next
effective dated exchange rate will start. Effectively the day after the end date".
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import duckdb

from churn.signals.rates import rates_as_of_sql, rates_at_sql
from churn.signals.tables import Tables
from golden_world import seed


def _rates(con: duckdb.DuckDBPyConnection, as_of: str) -> dict[str, Decimal]:
    frame = Tables(con).frame(rates_as_of_sql(), {"as_of": datetime.fromisoformat(as_of)})
    return {r["iso"]: r["conversion_rate"] for r in frame.iter_rows(named=True)}


def test_dated_rates_by_range(con: duckdb.DuckDBPyConnection) -> None:
    seed(con, {
        "core_dated_conversion_rates": [
            {"rate_id": "a", "iso_code": "EUR", "conversion_rate": "0.90",
             "start_date": "2026-01-01", "next_start_date": "2026-02-01"},
            # next_start_date not re-read after the later rate was added: the next
            # StartDate known ends the range anyway
            {"rate_id": "b", "iso_code": "EUR", "conversion_rate": "0.95",
             "start_date": "2026-02-01", "next_start_date": None},
            {"rate_id": "c", "iso_code": "GBP", "conversion_rate": "0.80",
             "start_date": "2026-01-01", "next_start_date": None},
            {"rate_id": "d", "iso_code": "GBP", "conversion_rate": "0.70",
             "start_date": "2026-03-01", "next_start_date": None},
        ],
        "core_currency_rates": [
            {"iso_code": "EUR", "conversion_rate": "0.99"},
            {"iso_code": "USD", "conversion_rate": "1", "is_corporate": True},
        ],
    })  # fmt: skip
    assert _rates(con, "2026-01-15") == {
        "EUR": Decimal("0.9"), "GBP": Decimal("0.8"), "USD": Decimal("1")
    }  # fmt: skip
    assert _rates(con, "2026-02-01")["EUR"] == Decimal("0.95")
    assert _rates(con, "2026-02-15")["GBP"] == Decimal("0.8")
    assert _rates(con, "2026-03-01")["GBP"] == Decimal("0.7")
    # before the first dated rate: today's CurrencyType
    assert _rates(con, "2025-06-01")["EUR"] == Decimal("0.99")


def test_rates_as_seen_without_dated_rates(con: duckdb.DuckDBPyConnection) -> None:
    seed(con, {
        "core_currency_rate_versions": [
            {"iso_code": "EUR", "conversion_rate": "0.90", "seen_from": "2026-01-01T00:00:00"},
            {"iso_code": "EUR", "conversion_rate": "0.95", "seen_from": "2026-02-10T00:00:00"},
        ],
        "core_currency_rates": [{"iso_code": "EUR", "conversion_rate": "0.95"}],
    })  # fmt: skip
    assert _rates(con, "2026-01-20") == {"EUR": Decimal("0.9")}
    assert _rates(con, "2026-02-10") == {"EUR": Decimal("0.95")}
    # before the first version seen: the first one
    assert _rates(con, "2025-01-01") == {"EUR": Decimal("0.9")}


def test_many_points_at_once(con: duckdb.DuckDBPyConnection) -> None:
    seed(con, {"core_currency_rate_versions": [
        {"iso_code": "JPY", "conversion_rate": "150", "seen_from": "2026-01-01T00:00:00"},
        {"iso_code": "JPY", "conversion_rate": "140", "seen_from": "2026-03-01T00:00:00"},
    ]})  # fmt: skip
    points = "SELECT * FROM (VALUES (TIMESTAMP '2026-02-01'), (TIMESTAMP '2026-04-01')) v(t)"
    rows = con.execute(
        f"SELECT CAST(t AS DATE)::VARCHAR, iso, conversion_rate FROM ({rates_at_sql(points)}) ORDER BY t"
    ).fetchall()
    assert rows == [("2026-02-01", "JPY", Decimal("150")), ("2026-04-01", "JPY", Decimal("140"))]
