"""Bad Stripe input (issue 15): quarantined with a reason or completed, never stored over a
full payload, never priced silently."""

from __future__ import annotations

import copy
import json
from typing import Any

import duckdb
import pytest

from churn.pipelines.stripe.extract import apply_events
from churn.pipelines.stripe.land import sequence_events
from churn.settings import SignalSettings
from churn.signals.mrr import account_mrr
from churn.signals.tables import Tables
from churn.warehouse import transaction
from stripe_extract.test_current_shapes import (
    DAY,
    FIXTURES,
    T0,
    _apply,
    _event,
    _subscription,
    _world_events,
)


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return dict(json.loads(FIXTURES.read_text())["resources"])


def test_a_partial_event_object_never_replaces_the_full_payload(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    """Issue 15: an event whose data.object is only {id, object} replaced the stored full
    payload; the subscription left core_* and its account was not scored. Stripe: data.
    object is "Object containing the API resource relevant to the event" (the Event
    object); one without its fields cannot be normalised, so it is kept out."""
    events = _world_events(resources)
    thin = {"id": "sub_cur", "object": "subscription"}
    events.append(
        _event(resources, "evt_thin", "customer.subscription.updated", T0 + 20 * DAY, thin)
    )
    _apply(con, [sequence_events(events, "oldest_first")])
    assert con.execute("SELECT subscription_id, status FROM core_subscriptions").fetchall() == [
        ("sub_cur", "active")
    ]
    stored = con.execute("SELECT payload->>'$.status' FROM raw_stripe_subscription").fetchall()
    assert stored == [("active",)]
    rows = con.execute("SELECT source, stream, object_id, reason FROM quarantine").fetchall()
    assert rows == [
        (
            "stripe_event",
            "subscription",
            "evt_thin",
            "data.object of subscription sub_cur is partial (no customer, status, items) and"
            " could not be retrieved; kept out",
        )
    ]
    # the event itself is kept (once), as Stripe sent it
    assert con.execute(
        "SELECT count(*) FROM raw_stripe_event WHERE id = 'evt_thin'"
    ).fetchone() == (1,)


def test_a_partial_object_with_some_fields_is_kept_out_too(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    events = _world_events(resources)
    half = {k: v for k, v in _subscription(resources, "price_c", 9).items() if k != "items"}
    events.append(
        _event(resources, "evt_half", "customer.subscription.updated", T0 + 20 * DAY, half)
    )
    _apply(con, [sequence_events(events, "oldest_first")])
    assert con.execute("SELECT price_id, quantity FROM core_subscription_items").fetchall() == [
        ("price_b", 3)
    ]


def _price(pid: str, **fields: Any) -> dict[str, Any]:
    price = {
        "id": pid,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": T0,
        "currency": "usd",
        "livemode": False,
        "product": "prod_1",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "tax_behavior": "exclusive",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": 1000,
        "unit_amount_decimal": "1000",
    }
    price.update(fields)
    return price


BAD_PRICES = {
    # "recurring.interval ... One of day, week, month or year." (the Price object)
    "price_fortnight": (
        {"recurring": {"interval": "fortnight", "interval_count": 1, "usage_type": "licensed"}},
        "recurring interval is not day, week, month or year",
    ),
    # "unit_amount: The unit amount in cents to be charged, represented as a whole integer"
    "price_string": (
        {"unit_amount": "12.50", "unit_amount_decimal": "12.50"},
        "no currency, or an amount that is not an integer",
    ),
    "price_float": ({"unit_amount": 12.5}, "no currency, or an amount that is not an integer"),
    "price_negative": ({"unit_amount": -500}, "a negative amount"),
    # "tiers ... flat_amount ... unit_amount": a tier with neither prices nothing
    "price_tiers": (
        {
            "billing_scheme": "tiered",
            "tiers_mode": "volume",
            "unit_amount": None,
            "unit_amount_decimal": None,
            "tiers": [
                {"up_to": 10, "unit_amount": None, "unit_amount_decimal": None,
                 "flat_amount": None, "flat_amount_decimal": None},
                {"up_to": None, "unit_amount": 500, "unit_amount_decimal": "500",
                 "flat_amount": None, "flat_amount_decimal": None},
            ],
        },
        "tiered, with a tier that has no amount",
    ),
}  # fmt: skip


def _with_items(resources: dict[str, Any], sid: str, cus: str, items: list[tuple[str, int]]) -> Any:
    sub = _subscription(resources, items[0][0], items[0][1])
    sub.update(id=sid, customer=cus, pause_collection=None)
    template = sub["items"]["data"][0]
    sub["items"]["data"] = [
        {**copy.deepcopy(template), "id": f"si_{sid}_{n}", "quantity": q,
         "price": {**template["price"], **_price(price)}}
        for n, (price, q) in enumerate(items)
    ]  # fmt: skip
    return sub


def test_prices_stripe_documents_otherwise_are_quarantined_and_mrr_is_unknown(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    """Issue 15: an unknown interval was priced as yearly; tiers with no amounts and a
    quarantined price gave MRR 0; "12.50" was rounded to 13. Each is a quarantine row with
    its reason, and an account at such a price has MRR NULL (unknown), not 0."""
    events = []
    for n, (pid, (fields, _)) in enumerate(BAD_PRICES.items()):
        events.append(_event(resources, f"evt_p{n}", "price.created", T0, _price(pid, **fields)))
    events.append(_event(resources, "evt_pg", "price.created", T0, _price("price_good")))
    for n, pid in enumerate([*BAD_PRICES, "price_good"]):
        sub = _with_items(resources, f"sub_{pid}", f"cus_{pid}", [(pid, 2)])
        events.append(_event(resources, f"evt_s{n}", "customer.subscription.created", T0, sub))
    _apply(con, [sequence_events(events, "oldest_first")])
    got = dict(
        con.execute("SELECT object_id, reason FROM quarantine WHERE stream = 'price'").fetchall()
    )
    assert got == {pid: reason for pid, (_, reason) in BAD_PRICES.items()}
    assert con.execute("SELECT price_id FROM core_prices").fetchall() == [("price_good",)]
    mrr = account_mrr(Tables(con), _ts(T0 + 5 * DAY), SignalSettings())
    by_customer = dict(zip(mrr["account_id"], mrr["mrr_minor"], strict=True))
    assert by_customer == {f"cus_{pid}": None for pid in BAD_PRICES} | {"cus_price_good": 2000}


def test_a_negative_quantity_is_quarantined(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    """Issue 15: quantity -3 gave MRR 0 (or less) silently. Stripe: "quantity: The quantity
    of the plan to which the customer should be subscribed": a count, never negative."""
    sub = _with_items(resources, "sub_neg", "cus_neg", [("price_good", -3)])
    events = [
        _event(resources, "evt_p", "price.created", T0, _price("price_good")),
        _event(resources, "evt_s", "customer.subscription.created", T0, sub),
    ]
    _apply(con, [sequence_events(events, "oldest_first")])
    assert con.execute("SELECT object_id, reason FROM quarantine").fetchall() == [
        ("sub_neg", "an item quantity is negative")
    ]
    assert con.execute("SELECT count(*) FROM core_subscriptions").fetchone() == (0,)


@pytest.mark.parametrize("quantity", ["3", 2.5])
def test_a_quantity_that_is_not_an_integer_is_quarantined(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any], quantity: Any
) -> None:
    sub = _with_items(resources, "sub_q", "cus_q", [("price_good", 1)])
    sub["items"]["data"][0]["quantity"] = quantity
    with transaction(con):
        apply_events(
            con, [(_event(resources, "evt_s", "customer.subscription.created", T0, sub), 1)], "test"
        )
    _apply(con, [])
    assert con.execute("SELECT reason FROM quarantine").fetchall() == [
        ("an item quantity is not an integer",)
    ]


def test_a_payload_breaking_two_rules_is_quarantined_once_with_the_first(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    """One quarantine row per object (its key), its reason the first rule broken in the
    rules' order: an item quantity that is a string comes before another item's negative
    one. The rules of a stream are judged in one statement; the row must not depend on
    which rule a statement met first."""
    sub = _with_items(resources, "sub_two", "cus_two", [("price_good", 1), ("price_good", -2)])
    sub["items"]["data"][0]["quantity"] = "3"
    events = [
        _event(resources, "evt_p", "price.created", T0, _price("price_good")),
        _event(resources, "evt_s", "customer.subscription.created", T0, sub),
    ]
    _apply(con, [sequence_events(events, "oldest_first")])
    assert con.execute("SELECT object_id, reason FROM quarantine").fetchall() == [
        ("sub_two", "an item quantity is not an integer")
    ]
    assert con.execute("SELECT count(*) FROM core_subscriptions").fetchone() == (0,)


def _ts(epoch: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
