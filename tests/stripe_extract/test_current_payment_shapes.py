"""Payments in Stripe's own current shapes (fixtures3), through events and the normaliser,
to ``payment_failure``: the invoice payment joins the invoice to its PaymentIntent, whose
charges are the attempts, and the PaymentIntent's ``last_payment_error.advice_code``
classes the decline.

Stripe API (The Invoice Payment object): "payment.payment_intent: ID of the PaymentIntent
associated with this payment when type is payment_intent"; (List all payments for an
invoice) ``invoice`` is an optional filter and ``created`` ranges are accepted, so the
extract lists them all.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from churn.pipelines.stripe.extract import apply_events
from churn.pipelines.stripe.normalise import normalise
from churn.settings import SignalSettings
from churn.signals import payment_failure
from churn.signals.tables import Tables
from churn.warehouse import transaction

FIXTURES = Path(__file__).with_name("fixtures3_subset.json")
T0 = 1_780_000_000  # 2026-05-28


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return json.loads(FIXTURES.read_text())["resources"]


def _event(
    resources: dict[str, Any], eid: str, etype: str, created: int, obj: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    event = copy.deepcopy(resources["event"])
    event.update(id=eid, type=etype, created=created, api_version="2025-09-30.clover",
                 livemode=False, data={"object": obj})  # fmt: skip
    return event, 0


def _events(resources: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    invoice = copy.deepcopy(resources["invoice"])
    invoice.update(id="in_cur", customer="cus_cur", status="open", created=T0, amount_due=4200,
                   amount_paid=0, amount_remaining=4200, attempt_count=2, attempted=True,
                   livemode=False, subscription=None)  # fmt: skip
    invoice["status_transitions"] = {"finalized_at": T0, "paid_at": None, "voided_at": None,
                                     "marked_uncollectible_at": None}  # fmt: skip
    assert "charge" not in invoice and "payment_intent" not in invoice  # basil on
    pi = copy.deepcopy(resources["payment_intent"])
    pi.update(id="pi_cur", customer="cus_cur", invoice=None, created=T0, amount=4200,
              status="requires_payment_method", latest_charge="ch_cur2", livemode=False,
              last_payment_error={"type": "card_error", "code": "card_declined",
                                  "decline_code": "generic_decline",
                                  "advice_code": "do_not_try_again", "charge": "ch_cur2"})  # fmt: skip
    inpay = copy.deepcopy(resources["invoice_payment"])
    inpay.update(id="inpay_cur", invoice="in_cur", created=T0, currency="usd",
                 amount_requested=4200, status="open", livemode=False,
                 payment={"type": "payment_intent", "payment_intent": "pi_cur"})  # fmt: skip
    charges = []
    for n, at in ((1, T0 + 1), (2, T0 + 3 * 86_400)):
        charge = copy.deepcopy(resources["charge"])
        charge.update(id=f"ch_cur{n}", customer="cus_cur", status="failed", paid=False,
                      failure_code="card_declined", created=at, livemode=False,
                      payment_intent="pi_cur", payment_method="pm_charged")  # fmt: skip
        charge["outcome"] = {**charge["outcome"], "reason": "generic_decline",
                             "type": "issuer_declined", "network_status": "declined_by_network"}  # fmt: skip
        assert "invoice" not in charge
        charges.append(charge)
    return [
        _event(resources, "evt_1", "invoice.finalized", T0, invoice),
        _event(resources, "evt_2", "payment_intent.created", T0, pi),
        _event(resources, "evt_3", "invoice_payment.paid", T0, inpay),
        _event(resources, "evt_4", "charge.failed", T0 + 1, charges[0]),
        _event(resources, "evt_5", "charge.failed", T0 + 3 * 86_400, charges[1]),
    ]


def test_current_payment_shapes_reach_payment_failure(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    with transaction(con):
        apply_events(con, _events(resources), "test")
    with transaction(con):
        normalise(con)
    assert con.execute(
        "SELECT invoice_id, payment_type, payment_intent_id, status FROM core_invoice_payments"
    ).fetchall() == [("in_cur", "payment_intent", "pi_cur", "open")]
    assert con.execute(
        "SELECT customer_id, latest_charge_id, last_decline_code, last_advice_code,"
        " last_error_charge_id FROM core_payment_intents"
    ).fetchall() == [("cus_cur", "ch_cur2", "generic_decline", "do_not_try_again", "ch_cur2")]
    assert con.execute(
        "SELECT count(*) FROM core_charges WHERE payment_intent_id = 'pi_cur' AND invoice_id IS NULL"
    ).fetchall() == [(2,)]

    as_of = datetime.fromtimestamp(T0 + 10 * 86_400, UTC).replace(tzinfo=None)
    rows = payment_failure.score(Tables(con), as_of, SignalSettings())
    assert rows["episode_key"].to_list() == ["payment_failure:in_cur"]
    evidence = json.loads(rows["evidence"][0])
    assert evidence["attempts"] == 2
    assert evidence["decline_class"] == "hard"  # the PaymentIntent's advice for that charge
    assert evidence["advice_code"] == "do_not_try_again"
    assert evidence["payment_method_id"] == "pm_charged"
