"""Current API shapes (Stripe's own fixtures) through events, normaliser and history; and
the order-independence of applying events."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import duckdb
import pytest

from churn.errors import ModeMismatchError
from churn.pipelines.stripe.extract import apply_events
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.land import sequence_events
from churn.pipelines.stripe.normalise import normalise
from churn.warehouse import transaction

# Stripe's own examples of the current API shapes (a subset of fixtures3.json, MIT).
FIXTURES = Path(__file__).with_name("fixtures3_subset.json")
T0 = 1_780_000_000  # 2026-05-28
DAY = 86_400


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return json.loads(FIXTURES.read_text())["resources"]


def _event(
    resources: dict[str, Any], eid: str, etype: str, created: int, obj: dict[str, Any]
) -> dict[str, Any]:
    event = copy.deepcopy(resources["event"])
    event.update(
        id=eid, type=etype, created=created, api_version="2026-08-27.basil", livemode=False
    )
    event["data"] = {"object": obj}
    return event


def _subscription(
    resources: dict[str, Any], price: str, quantity: int, cape: bool = False
) -> dict[str, Any]:
    sub = copy.deepcopy(resources["subscription"])
    sub.update(
        id="sub_cur",
        customer="cus_cur",
        status="active",
        created=T0,
        cancel_at_period_end=cape,
        cancel_at=None,
        canceled_at=None,
        ended_at=None,
        livemode=False,
    )
    item = sub["items"]["data"][0]
    item.update(
        id="si_cur",
        quantity=quantity,
        current_period_start=T0,
        current_period_end=T0 + 30 * DAY,
        created=T0,
    )
    item["price"] = {**item["price"], "id": price}
    sub["items"]["data"] = [item]
    assert "current_period_start" not in sub  # the current shape: periods on items only
    return sub


def _world_events(resources: dict[str, Any]) -> list[dict[str, Any]]:
    customer = copy.deepcopy(resources["customer"])
    customer.update(id="cus_cur", email="Billing@Example.COM", created=T0, livemode=False)
    invoice = copy.deepcopy(resources["invoice"])
    invoice.update(
        id="in_cur",
        customer="cus_cur",
        status="open",
        created=T0 + 1,
        amount_due=4200,
        amount_paid=0,
        attempt_count=2,
        attempted=True,
        livemode=False,
    )
    invoice["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"metadata": {}, "subscription": "sub_cur"},
    }
    invoice["subscription"] = None
    charge = copy.deepcopy(resources["charge"])
    charge.update(
        id="ch_cur",
        customer="cus_cur",
        status="failed",
        paid=False,
        failure_code="card_declined",
        created=T0 + 2,
        livemode=False,
    )
    charge["outcome"] = {
        **charge["outcome"],
        "reason": "insufficient_funds",
        "type": "issuer_declined",
    }
    assert "invoice" not in charge  # the current shape names no invoice
    return [
        _event(resources, "evt_1", "customer.created", T0, customer),
        _event(
            resources,
            "evt_2",
            "customer.subscription.created",
            T0,
            _subscription(resources, "price_a", 1),
        ),
        _event(resources, "evt_3", "invoice.payment_failed", T0 + 1, invoice),
        _event(resources, "evt_4", "charge.failed", T0 + 2, charge),
        _event(
            resources,
            "evt_5",
            "customer.subscription.updated",
            T0 + 5 * DAY,
            _subscription(resources, "price_a", 5),
        ),
        _event(
            resources,
            "evt_6",
            "customer.subscription.updated",
            T0 + 9 * DAY,
            _subscription(resources, "price_b", 5),
        ),
        # two changes in one second: the listing order says which is newer
        _event(
            resources,
            "evt_7",
            "customer.subscription.updated",
            T0 + 12 * DAY,
            _subscription(resources, "price_b", 3),
        ),
        _event(
            resources,
            "evt_8",
            "customer.subscription.updated",
            T0 + 12 * DAY,
            _subscription(resources, "price_b", 3, cape=True),
        ),
    ]


def _apply(con: duckdb.DuckDBPyConnection, batches: list[list[tuple[dict[str, Any], int]]]) -> None:
    for batch in batches:
        with transaction(con):
            apply_events(con, batch, "test")
    with transaction(con):
        normalise(con)
        build_history(con)


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    tables = [
        "core_customers",
        "core_subscriptions",
        "core_subscription_items",
        "core_invoices",
        "core_charges",
        "history_subscriptions",
        "history_subscription_items",
    ]
    out = {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    for t in ("customer", "subscription", "invoice", "charge"):
        out[t] = sorted(
            con.execute(f"SELECT id, payload::VARCHAR, is_deleted FROM raw_stripe_{t}").fetchall()
        )
    out["events"] = sorted(con.execute("SELECT id FROM raw_stripe_event").fetchall())
    return out


def test_current_shapes_normalise(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    # Stripe lists newest first: the read is the reverse of creation order.
    sequenced = sequence_events(list(reversed(_world_events(resources))), "newest_first")
    _apply(con, [sequenced])

    sub = con.execute(
        "SELECT status, cancel_at_period_end, epoch(current_period_start)::BIGINT, "
        "epoch(current_period_end)::BIGINT FROM core_subscriptions"
    ).fetchall()
    assert sub == [("active", True, T0, T0 + 30 * DAY)]  # periods taken from the item
    assert con.execute("SELECT price_id, quantity FROM core_subscription_items").fetchall() == [
        ("price_b", 3)
    ]
    inv = con.execute(
        "SELECT subscription_id, status, amount_due, attempt_count FROM core_invoices"
    ).fetchall()
    assert inv == [("sub_cur", "open", 4200, 2)]  # subscription from parent.subscription_details
    charge = con.execute(
        "SELECT invoice_id, customer_id, decline_code, outcome_type, card_exp_year "
        "FROM core_charges"
    ).fetchall()
    assert charge == [(None, "cus_cur", "insufficient_funds", "issuer_declined", 2030)]
    assert con.execute("SELECT email_domain FROM core_customers").fetchall() == [("example.com",)]

    history = con.execute(
        "SELECT epoch(valid_from)::BIGINT, epoch(valid_to)::BIGINT, cancel_at_period_end "
        "FROM history_subscriptions ORDER BY valid_from"
    ).fetchall()
    assert history == [(T0, T0 + 12 * DAY, False), (T0 + 12 * DAY, None, True)]
    items = con.execute(
        "SELECT epoch(valid_from)::BIGINT, epoch(valid_to)::BIGINT, price_id, quantity "
        "FROM history_subscription_items ORDER BY valid_from"
    ).fetchall()
    assert items == [
        (T0, T0 + 5 * DAY, "price_a", 1),
        (T0 + 5 * DAY, T0 + 9 * DAY, "price_a", 5),
        (T0 + 9 * DAY, T0 + 12 * DAY, "price_b", 5),
        (T0 + 12 * DAY, None, "price_b", 3),
    ]


def test_same_events_twice_or_reversed_give_the_same_state(
    tmp_path: Path, resources: dict[str, Any]
) -> None:
    from churn import warehouse

    sequenced = sequence_events(_world_events(resources), "oldest_first")
    assert sequence_events(list(reversed(_world_events(resources))), "newest_first") == sequenced
    shuffled = sequenced[:]
    random.Random(7).shuffle(shuffled)
    orders = {
        "forward": [sequenced],
        "reversed": [list(reversed(sequenced))],
        "twice": [sequenced, sequenced],
        "one_by_one_shuffled": [[e] for e in shuffled] + [[e] for e in sequenced],
    }
    states = {}
    for name, batches in orders.items():
        con = warehouse.connect(tmp_path / f"{name}.duckdb")
        _apply(con, batches)
        states[name] = _snapshot(con)
        con.close()
    assert states["forward"]["core_subscription_items"] == [
        ("si_cur", "sub_cur", "price_b", 3, *states["forward"]["core_subscription_items"][0][4:])
    ]
    for name, state in states.items():
        assert state == states["forward"], name


def test_deleted_event_kept_as_deleted(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    events = _world_events(resources)[:1]
    deleted = _event(
        resources,
        "evt_9",
        "customer.deleted",
        T0 + DAY,
        {**events[0]["data"]["object"], "deleted": True},
    )
    _apply(con, [sequence_events([*events, deleted], "oldest_first")])
    assert con.execute("SELECT customer_id, is_deleted FROM core_customers").fetchall() == [
        ("cus_cur", True)
    ]


def test_bad_payload_is_quarantined_and_the_rest_lands(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    events = _world_events(resources)
    broken = copy.deepcopy(events[1]["data"]["object"])
    broken.update(id="sub_broken", customer=None)
    events.append(_event(resources, "evt_b", "customer.subscription.created", T0, broken))
    _apply(con, [sequence_events(events, "oldest_first")])
    assert con.execute("SELECT stream, object_id, reason FROM quarantine").fetchall() == [
        ("subscription", "sub_broken", "no customer or status")
    ]
    assert con.execute("SELECT subscription_id FROM core_subscriptions").fetchall() == [
        ("sub_cur",)
    ]
    assert con.execute(
        "SELECT count(*) FROM history_subscriptions WHERE subscription_id = 'sub_broken'"
    ).fetchone() == (0,)


def test_live_key_refuses_test_events(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    events = sequence_events(_world_events(resources), "oldest_first")
    with pytest.raises(ModeMismatchError, match="live-mode key"), transaction(con):
        apply_events(con, events, "live")
    assert con.execute("SELECT count(*) FROM raw_stripe_event").fetchone() == (0,)


def test_subscription_first_seen_canceled_was_active_until_it_ended(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    sub = _subscription(resources, "price_a", 2)
    sub.update(status="canceled", canceled_at=T0 + 40 * DAY, ended_at=T0 + 41 * DAY)
    _apply(
        con,
        [
            sequence_events(
                [_event(resources, "evt_c", "customer.subscription.deleted", T0 + 50 * DAY, sub)],
                "oldest_first",
            )
        ],
    )
    history = con.execute(
        "SELECT epoch(valid_from)::BIGINT, epoch(valid_to)::BIGINT, status "
        "FROM history_subscriptions ORDER BY valid_from"
    ).fetchall()
    assert history == [(T0, T0 + 41 * DAY, "active"), (T0 + 41 * DAY, None, "canceled")]
    items = con.execute(
        "SELECT epoch(valid_from)::BIGINT, valid_to, quantity FROM history_subscription_items"
    ).fetchall()
    assert items == [(T0, None, 2)]


def test_incremental_refresh_matches_a_whole_rebuild_and_touches_only_changes(
    con: duckdb.DuckDBPyConnection, resources: dict[str, Any]
) -> None:
    from churn.pipelines.stripe.extract import refresh_core
    from churn.pipelines.stripe.land import mark_deleted

    events = _world_events(resources)
    broken = copy.deepcopy(events[1]["data"]["object"])
    broken.update(id="sub_broken", customer=None)
    broken["items"]["data"][0]["id"] = "si_broken"
    events.append(_event(resources, "evt_b", "customer.subscription.created", T0, broken))
    fixed = {**broken, "customer": "cus_cur"}
    events.append(_event(resources, "evt_f", "customer.subscription.updated", T0 + DAY, fixed))
    # Applied one event per run, each run refreshing only what it landed.
    for event in sequence_events(events, "oldest_first"):
        with transaction(con):
            apply_events(con, [event], "test")
            refresh_core(con, "run")
    with transaction(con):
        mark_deleted(con, "invoice", ["in_cur"], datetime_of(T0 + 20 * DAY))
        refresh_core(con, "run")
    assert con.execute("SELECT count(*) FROM stripe_dirty").fetchone() == (0,)
    incremental = _snapshot(con)
    assert con.execute("SELECT is_deleted FROM core_invoices").fetchall() == [(True,)]
    assert {r[0] for r in incremental["core_subscriptions"]} == {"sub_cur", "sub_broken"}
    with transaction(con):
        refresh_core(con, "run", full=True)
    assert _snapshot(con) == incremental

    # A later run redoes the object that changed, and leaves every other row alone.
    con.execute("UPDATE core_charges SET amount = -1")
    con.execute(
        "UPDATE history_subscriptions SET status = 'x' WHERE subscription_id = 'sub_broken'"
    )
    later = _subscription(resources, "price_c", 7)
    with transaction(con):
        apply_events(
            con,
            [
                (
                    _event(
                        resources, "evt_l", "customer.subscription.updated", T0 + 30 * DAY, later
                    ),
                    1,
                )
            ],
            "test",
        )
        refresh_core(con, "run")
    assert con.execute(
        "SELECT price_id, quantity FROM core_subscription_items WHERE subscription_id = 'sub_cur'"
    ).fetchall() == [("price_c", 7)]
    assert con.execute("SELECT DISTINCT amount FROM core_charges").fetchall() == [(-1,)]
    assert con.execute(
        "SELECT DISTINCT status FROM history_subscriptions WHERE subscription_id = 'sub_broken'"
    ).fetchall() == [("x",)]


def datetime_of(epoch: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
