"""What card_expiry reads that Stripe changes in place, as validity intervals.

- a customer's ``invoice_settings.default_payment_method`` (and ``default_source``)
  change with ``customer.updated``;
- a card's ``exp_month``/``exp_year`` change on the same id: ``payment_method.updated``
  and ``payment_method.automatically_updated`` ("Occurs whenever a payment method's
  details are automatically updated by the network").

An event's ``previous_attributes`` ("Object containing the names of the updated
attributes and their values prior to the event") give the state before the first event
seen, from the object's ``created``: the first run already knows the card a customer
had before the change, within the 30 days of events Stripe keeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.pipelines.stripe.extract import apply_events
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.land import Version, land
from churn.pipelines.stripe.normalise import normalise

DAY = 86_400
T0 = 1_750_000_000


def _ts(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC).replace(tzinfo=None)


def _customer(pm: str) -> dict[str, Any]:
    return {"id": "cus_1", "object": "customer", "created": T0, "livemode": False,
            "default_source": None,
            "invoice_settings": {"default_payment_method": pm, "footer": None}}  # fmt: skip


def _card(pm: str, year: int, created: int = T0) -> dict[str, Any]:
    return {"id": pm, "object": "payment_method", "type": "card", "customer": "cus_1",
            "created": created, "livemode": False,
            "card": {"brand": "visa", "last4": "4242", "exp_month": 1, "exp_year": year}}  # fmt: skip


def _event(
    n: int, etype: str, obj: dict[str, Any], ts: int, prev: dict[str, Any] | None = None
) -> tuple[dict[str, Any], int]:
    data: dict[str, Any] = {"object": obj}
    if prev is not None:
        data["previous_attributes"] = prev
    return ({"id": f"evt_{n:04d}", "object": "event", "type": etype, "created": ts,
             "api_version": "2025-09-30.clover", "livemode": False, "data": data}, 1)  # fmt: skip


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = warehouse.connect(tmp_path / "p.duckdb")
    yield c
    c.close()


def _build(con: duckdb.DuckDBPyConnection, events: list[tuple[dict[str, Any], int]]) -> None:
    with warehouse.transaction(con):
        apply_events(con, events, None)
    with warehouse.transaction(con):
        normalise(con)
        build_history(con)


def test_default_payment_method_changes_over_time(con: duckdb.DuckDBPyConnection) -> None:
    """Only the change is seen (customer.updated): the default before it comes from its
    previous_attributes, from the customer's creation."""
    change = T0 + 40 * DAY
    _build(con, [_event(1, "customer.updated", _customer("pm_new"), change,
                        {"invoice_settings": {"default_payment_method": "pm_old",
                                              "footer": None}})])  # fmt: skip
    rows = con.execute(
        "SELECT valid_from, valid_to, default_payment_method FROM history_customer_defaults "
        "ORDER BY valid_from"
    ).fetchall()
    assert rows == [(_ts(T0), _ts(change), "pm_old"), (_ts(change), None, "pm_new")]


def test_card_expiry_updated_in_place(con: duckdb.DuckDBPyConnection) -> None:
    updated = T0 + 50 * DAY
    _build(con, [
        _event(1, "payment_method.attached", _card("pm_1", 2026), T0),
        _event(2, "payment_method.automatically_updated", _card("pm_1", 2030), updated,
               {"card": {"exp_year": 2026}}),
    ])  # fmt: skip
    rows = con.execute(
        "SELECT valid_from, valid_to, card_exp_year FROM history_payment_methods "
        "ORDER BY valid_from"
    ).fetchall()
    assert rows == [(_ts(T0), _ts(updated), 2026), (_ts(updated), None, 2030)]


def test_only_the_update_seen_keeps_the_expiry_before_it(con: duckdb.DuckDBPyConnection) -> None:
    updated = T0 + 50 * DAY
    _build(con, [_event(2, "payment_method.updated", _card("pm_1", 2030), updated,
                        {"card": {"exp_year": 2026}})])  # fmt: skip
    rows = con.execute(
        "SELECT valid_from, card_exp_year FROM history_payment_methods ORDER BY valid_from"
    ).fetchall()
    assert rows == [(_ts(T0), 2026), (_ts(updated), 2030)]


def test_a_listed_state_without_events_holds_from_created(con: duckdb.DuckDBPyConnection) -> None:
    fetched = _ts(T0 + 90 * DAY)
    with warehouse.transaction(con):
        land(con, "customer", [(_customer("pm_1"), Version("list", fetched, 0, "", None))],
             fetched)  # fmt: skip
        land(con, "payment_method", [(_card("pm_1", 2027), Version("list", fetched, 0, "", None))],
             fetched)  # fmt: skip
    with warehouse.transaction(con):
        normalise(con)
        build_history(con)
    assert con.execute(
        "SELECT valid_from, valid_to, default_payment_method FROM history_customer_defaults"
    ).fetchall() == [(_ts(T0), None, "pm_1")]
    assert con.execute(
        "SELECT valid_from, valid_to, card_exp_year, is_deleted FROM history_payment_methods"
    ).fetchall() == [(_ts(T0), None, 2027, False)]


def test_a_detached_card_is_nobodys_from_then(con: duckdb.DuckDBPyConnection) -> None:
    gone = T0 + 10 * DAY
    _build(con, [
        _event(1, "payment_method.attached", _card("pm_1", 2027), T0),
        _event(2, "payment_method.detached", {**_card("pm_1", 2027), "customer": None}, gone,
               {"customer": "cus_1"}),
    ])  # fmt: skip
    rows = con.execute(
        "SELECT valid_from, customer_id FROM history_payment_methods ORDER BY valid_from"
    ).fetchall()
    assert rows == [(_ts(T0), "cus_1"), (_ts(gone), None)]


def _charge(n: int, pm: str, year: int, ts: int, *, basil: bool = True) -> dict[str, Any]:
    charge: dict[str, Any] = {
        "id": f"ch_{n}", "object": "charge", "customer": "cus_1", "amount": 1000,
        "currency": "usd", "status": "succeeded", "created": ts, "livemode": False,
    }  # fmt: skip
    card = {"brand": "visa", "last4": "4242", "exp_month": 1, "exp_year": year}
    if basil:
        charge["payment_method"] = pm
        charge["payment_method_details"] = {"type": "card", "card": card}
    else:  # a legacy card source, the card itself on the charge
        charge["source"] = {"id": pm, "object": "card", "customer": "cus_1", **card}
    return charge


@pytest.mark.parametrize("basil", [True, False])
def test_charges_date_an_expiry_updated_before_the_events_kept(
    con: duckdb.DuckDBPyConnection, basil: bool
) -> None:
    """The card is listed today with its renewed expiry and no event is left of the
    update: the charges made with it still say what its expiry was when charged
    (payment_method_details.card.exp_month/exp_year; a legacy source's own fields)."""
    pm = "pm_1" if basil else "card_1"
    fetched = _ts(T0 + 200 * DAY)
    with warehouse.transaction(con):
        land(con, "payment_method", [(_card(pm, 2030), Version("list", fetched, 0, "", None))],
             fetched)  # fmt: skip
        land(con, "charge", [
            (_charge(1, pm, 2026, T0 + 30 * DAY, basil=basil), Version("list", fetched, 0, "", None)),
            (_charge(2, pm, 2026, T0 + 60 * DAY, basil=basil), Version("list", fetched, 0, "", None)),
            (_charge(3, pm, 2030, T0 + 90 * DAY, basil=basil), Version("list", fetched, 0, "", None)),
        ], fetched)  # fmt: skip
    with warehouse.transaction(con):
        normalise(con)
        build_history(con)
    rows = con.execute(
        "SELECT valid_from, valid_to, card_exp_year FROM history_payment_methods ORDER BY 1"
    ).fetchall()
    assert rows == [(_ts(T0), _ts(T0 + 90 * DAY), 2026), (_ts(T0 + 90 * DAY), None, 2030)]


def test_versions_of_one_instant_keep_the_last(con: duckdb.DuckDBPyConnection) -> None:
    """customer.created and customer.updated in the customer's first second: the state
    before the update and the created one both start at `created`; the update wins."""
    _build(con, [
        _event(1, "customer.created", _customer("pm_a"), T0),
        _event(2, "customer.updated", _customer("pm_b"), T0,
               {"invoice_settings": {"default_payment_method": "pm_x", "footer": None}}),
    ])  # fmt: skip
    rows = con.execute(
        "SELECT valid_from, valid_to, default_payment_method FROM history_customer_defaults"
    ).fetchall()
    assert rows == [(_ts(T0), None, "pm_b")]
