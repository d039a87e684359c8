"""Subscription discounts in every shape Stripe has sent, point in time.

Documented behaviour these cases follow:

- the Discount object's ``id``: "Discounts cannot be fetched by ID. Use
  expand[]=discounts in API calls to expand discount IDs in an array." Since
  2025-03-31.basil a subscription's ``discounts`` is a list of those ids (the single
  ``discount`` object is gone);
- 2025-09-30.clover "adds a new source property to the Discount object and removes the
  auto-expanded coupon property ... The Coupon object is not automatically expanded on
  Discount objects, including within event notifications": the coupon is
  ``source.coupon``, an id, read from the coupon stream;
- before, ``discount.coupon`` is the whole coupon, auto-expanded.

A ``forever`` coupon lowers MRR (mrr.py); a discount counts only inside
``[start, end)``, ended early when it is deleted (``customer.discount.deleted``) or
when a later version of its subscription no longer names it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.pipelines.stripe.extract import apply_events
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.normalise import normalise
from churn.settings import SignalSettings
from churn.signals.mrr import account_mrr
from churn.signals.tables import Tables

DAY = 86_400
T0 = 1_750_000_000  # 2025-06-15


def _ts(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC).replace(tzinfo=None)


COUPON = {
    "id": "PARTNER10", "object": "coupon", "percent_off": 10.0, "amount_off": None,
    "currency": None, "duration": "forever", "duration_in_months": None, "created": T0 - DAY,
    "livemode": False,
}  # fmt: skip
PRICE = {
    "id": "price_seat", "object": "price", "currency": "usd", "unit_amount": 1000,
    "type": "recurring", "billing_scheme": "per_unit", "created": T0 - DAY, "livemode": False,
    "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
}  # fmt: skip


def _sub(**extra: Any) -> dict[str, Any]:
    return {
        "id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "active",
        "currency": "usd", "created": T0, "livemode": False, "collection_method":
        "charge_automatically", "cancel_at_period_end": False,
        "items": {"object": "list", "data": [{
            "id": "si_1", "object": "subscription_item", "price": "price_seat", "quantity": 10,
            "current_period_start": T0, "current_period_end": T0 + 30 * DAY}]},
        **extra,
    }  # fmt: skip


def _discount(shape: str, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": "di_1", "object": "discount", "customer": "cus_1", "subscription": "sub_1",
        "start": T0, "end": None, "invoice": None, "invoice_item": None,
        "promotion_code": None, **extra,
    }  # fmt: skip
    if shape == "clover":
        d["source"] = {"type": "coupon", "coupon": "PARTNER10"}
    else:
        d["coupon"] = dict(COUPON)
    return d


def _event(n: int, etype: str, obj: dict[str, Any], ts: int) -> tuple[dict[str, Any], int]:
    return (
        {"id": f"evt_{n:04d}", "object": "event", "type": etype, "created": ts,
         "api_version": "2025-09-30.clover", "livemode": False, "data": {"object": obj}},
        1,
    )  # fmt: skip


@pytest.fixture
def con(tmp_path: Any) -> duckdb.DuckDBPyConnection:
    c = warehouse.connect(tmp_path / "d.duckdb")
    yield c
    c.close()


def _apply(con: duckdb.DuckDBPyConnection, events: list[tuple[dict[str, Any], int]]) -> None:
    base = [_event(900, "coupon.created", COUPON, T0 - DAY),
            _event(901, "price.created", PRICE, T0 - DAY)]  # fmt: skip
    with warehouse.transaction(con):
        apply_events(con, base + events, None)
    with warehouse.transaction(con):
        normalise(con)
        build_history(con)


def _discounts(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT discount_id, coupon_id, percent_off, duration, starts_at, ends_at "
        "FROM core_subscription_discounts ORDER BY discount_id"
    ).fetchall()


def _mrr(con: duckdb.DuckDBPyConnection, at: int) -> int:
    frame = account_mrr(Tables(con), _ts(at), SignalSettings())
    return int(frame["mrr_minor"].sum())


@pytest.mark.parametrize("shape", ["clover", "basil"])
def test_discount_ids_resolve_from_their_own_events(
    con: duckdb.DuckDBPyConnection, shape: str
) -> None:
    """Current shape: the subscription names an id; the discount came in its own event."""
    _apply(con, [
        _event(1, "customer.discount.created", _discount(shape), T0),
        _event(2, "customer.subscription.created", _sub(discounts=["di_1"]), T0),
    ])  # fmt: skip
    assert _discounts(con) == [("di_1", "PARTNER10", 10, "forever", _ts(T0), None)]
    assert _mrr(con, T0 + DAY) == 9000  # a forever coupon lowers MRR


def test_expanded_discounts_in_a_listing_land_on_their_own(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """A listing with expand[]=data.discounts embeds the objects: they land in
    raw_stripe_discount, and the subscription keeps the ids (as an event carries them)."""
    sub = _sub(discounts=[_discount("clover")])
    _apply(con, [_event(1, "customer.subscription.created", sub, T0)])
    stored = con.execute("SELECT payload->'$.discounts' FROM raw_stripe_subscription").fetchone()
    assert stored is not None and stored[0] == '["di_1"]'
    assert con.execute("SELECT id FROM raw_stripe_discount").fetchall() == [("di_1",)]
    assert _discounts(con) == [("di_1", "PARTNER10", 10, "forever", _ts(T0), None)]


def test_old_single_discount_object(con: duckdb.DuckDBPyConnection) -> None:
    """Before basil: ``discount`` is one object with the coupon inside."""
    _apply(con, [_event(1, "customer.subscription.created",
                        _sub(discount=_discount("old")), T0)])  # fmt: skip
    assert _discounts(con) == [("di_1", "PARTNER10", 10, "forever", _ts(T0), None)]
    assert _mrr(con, T0 + DAY) == 9000


def test_a_deleted_discount_ends_when_it_was_deleted(con: duckdb.DuckDBPyConnection) -> None:
    """customer.discount.deleted: before it the coupon lowered MRR, after it not."""
    gone = T0 + 10 * DAY
    _apply(con, [
        _event(1, "customer.discount.created", _discount("clover"), T0),
        _event(2, "customer.subscription.created", _sub(discounts=["di_1"]), T0),
        _event(3, "customer.discount.deleted", _discount("clover"), gone),
        _event(4, "customer.subscription.updated", _sub(discounts=[]), gone),
    ])  # fmt: skip
    assert _discounts(con) == [("di_1", "PARTNER10", 10, "forever", _ts(T0), _ts(gone))]
    assert _mrr(con, T0 + DAY) == 9000
    assert _mrr(con, gone + DAY) == 10000


def test_a_discount_no_longer_named_ends_with_that_version(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """No deletion event seen: the first version without the id ends it."""
    gone = T0 + 12 * DAY
    _apply(con, [
        _event(1, "customer.discount.created", _discount("clover"), T0),
        _event(2, "customer.subscription.created", _sub(discounts=["di_1"]), T0),
        _event(3, "customer.subscription.updated", _sub(discounts=[]), gone),
    ])  # fmt: skip
    assert _discounts(con)[0][5] == _ts(gone)
    assert _mrr(con, T0 + DAY) == 9000
    assert _mrr(con, gone + DAY) == 10000


def test_a_repeating_discount_ends_at_its_end(con: duckdb.DuckDBPyConnection) -> None:
    end = T0 + 90 * DAY
    _apply(con, [
        _event(1, "customer.discount.created", _discount("clover", end=end), T0),
        _event(2, "customer.subscription.created", _sub(discounts=["di_1"]), T0),
    ])  # fmt: skip
    assert _discounts(con)[0][5] == _ts(end)
