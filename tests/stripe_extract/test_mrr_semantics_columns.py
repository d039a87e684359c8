"""The columns the MRR semantics read, from Stripe payloads of both shapes to the engine.

A subscription's ``pause_collection`` reaches its history (the versions made from invoices
are not paused); a price's ``tax_behavior`` reaches ``core_prices``; an invoice's inclusive
taxes (current ``taxes[].tax_behavior``, older ``tax_amounts[].inclusive``) and the amount
they were computed on (``taxable_amount``, once per line) reach ``core_invoices``; the MRR
engine then reads an inclusive price net of tax.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.land import Version, land
from churn.pipelines.stripe.normalise import normalise
from churn.settings import SignalSettings
from churn.signals.mrr import account_mrr
from churn.signals.tables import Tables

DAY = 86_400
T0 = 1_750_000_000  # 2025-06-15
FETCHED = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)


def _ts(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC).replace(tzinfo=None)


PRICE = {
    "id": "price_vat",
    "object": "price",
    "currency": "eur",
    "type": "recurring",
    "billing_scheme": "per_unit",
    "unit_amount": 1190,
    "tax_behavior": "inclusive",
    "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
    "created": T0,
    "livemode": False,
}


def _sub(**extra: Any) -> dict[str, Any]:
    return {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": "active",
        "currency": "eur",
        "created": T0,
        "livemode": False,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "object": "subscription_item",
                    "price": {"id": "price_vat", "object": "price", "currency": "eur"},
                    "quantity": 1,
                    "current_period_start": T0 + 60 * DAY,
                    "current_period_end": T0 + 90 * DAY,
                }
            ],
        },
        **extra,
    }


def _invoice(n: int, *, basil: bool) -> dict[str, Any]:
    start = T0 + n * 30 * DAY
    line: dict[str, Any] = {
        "id": f"il_{n}",
        "object": "line_item",
        "amount": 1190,
        "currency": "eur",
        "period": {"start": start, "end": start + 30 * DAY},
        "quantity": 1,
    }
    inv: dict[str, Any] = {
        "id": f"in_{n}",
        "object": "invoice",
        "customer": "cus_1",
        "currency": "eur",
        "status": "paid",
        "amount_due": 1190,
        "created": start,
        "livemode": False,
        "lines": {"object": "list", "has_more": False, "data": [line]},
    }
    if basil:
        line["pricing"] = {"type": "price_details", "price_details": {"price": "price_vat"}}
        line["parent"] = {"type": "subscription_item_details", "subscription_item_details": {
            "subscription": "sub_1", "subscription_item": "si_1", "proration": False}}  # fmt: skip
        line["taxes"] = [
            {"amount": 190, "tax_behavior": "inclusive", "taxable_amount": 1000,
             "type": "tax_rate_details"},
        ]  # fmt: skip
        inv["parent"] = {"type": "subscription_details",
                         "subscription_details": {"subscription": "sub_1"}}  # fmt: skip
    else:
        line.update(type="subscription", subscription="sub_1", subscription_item="si_1",
                    price={"id": "price_vat", "object": "price"}, proration=False,
                    tax_amounts=[{"amount": 190, "inclusive": True, "taxable_amount": 1000}])  # fmt: skip
        inv["subscription"] = "sub_1"
    return inv


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = warehouse.connect(":memory:")
    yield c
    c.close()


def _build(con: duckdb.DuckDBPyConnection, sub: dict[str, Any], invoices: list[Any]) -> None:
    v = Version("list", FETCHED, 0, "list", None)
    land(con, "price", [(PRICE, v)], FETCHED)
    land(con, "subscription", [(sub, v)], FETCHED)
    land(con, "invoice", [(i, v) for i in invoices], FETCHED)
    normalise(con, None, full=True)
    build_history(con, full=True)


@pytest.mark.parametrize("basil", [True, False], ids=["basil", "pre-basil"])
def test_an_inclusive_price_reaches_mrr_net_of_its_invoices_tax(
    con: duckdb.DuckDBPyConnection, basil: bool
) -> None:
    _build(con, _sub(), [_invoice(n, basil=basil) for n in range(3)])
    assert con.execute("SELECT tax_behavior FROM core_prices").fetchall() == [("inclusive",)]
    taxes = con.execute(
        "SELECT DISTINCT inclusive_tax, inclusive_taxable FROM core_invoices"
    ).fetchall()
    assert taxes == [(190, 1000)]
    mrr = account_mrr(Tables(con), _ts(T0 + 75 * DAY), SignalSettings())
    assert mrr["mrr_minor"].to_list() == [1000]  # 11.90 with VAT, 10.00 net


def test_pause_collection_is_part_of_the_history_but_not_of_invoiced_periods(
    con: duckdb.DuckDBPyConnection,
) -> None:
    paused = _sub(pause_collection={"behavior": "void", "resumes_at": T0 + 200 * DAY})
    _build(con, paused, [_invoice(n, basil=True) for n in range(3)])
    rows = con.execute(
        "SELECT valid_from, pause_behavior, pause_resumes_at FROM history_subscriptions "
        "ORDER BY valid_from"
    ).fetchall()
    # billed periods before the listed state are not paused; the listed state is
    assert rows[0][1:] == (None, None)
    assert rows[-1][1:] == ("void", _ts(T0 + 200 * DAY))
    settings = SignalSettings()
    assert account_mrr(Tables(con), _ts(T0 + 15 * DAY), settings)["mrr_minor"].to_list() == [1000]
    assert account_mrr(Tables(con), _ts(T0 + 75 * DAY), settings)["mrr_minor"].to_list() == [0]
