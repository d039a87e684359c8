"""History from the first run: a subscription's past comes back from its invoices' lines.

A backfill lists today's state only; every billed period's invoice line names the item,
its price and its quantity for that period (``period.start``..``period.end``), so the
seats and plans a customer had before the service was installed are known, back to the
first invoice. A change mid-period shows in its "remaining time" proration line.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.land import Version, land
from churn.pipelines.stripe.normalise import normalise
from churn.pipelines.stripe.rebuild import rebuild_core

DAY = 86_400
T0 = 1_750_000_000  # 2025-06-15
FETCHED = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)


def _ts(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, UTC).replace(tzinfo=None)


def _sub(quantity: int, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": status,
        "currency": "usd",
        "created": T0,
        "livemode": False,
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "object": "subscription_item",
                    "price": {"id": "price_seat", "object": "price", "currency": "usd"},
                    "quantity": quantity,
                    "current_period_start": T0 + 150 * DAY,
                    "current_period_end": T0 + 180 * DAY,
                }
            ],
        },
        **extra,
    }


def _line(start: int, quantity: int, *, basil: bool, proration: bool = False) -> dict[str, Any]:
    line: dict[str, Any] = {
        "id": f"il_{start}_{quantity}_{proration}",
        "object": "line_item",
        "amount": 1000 * quantity,
        "currency": "usd",
        "period": {"start": start, "end": start + 30 * DAY},
        "quantity": quantity,
    }
    if basil:  # 2025-03-31.basil and later
        line["pricing"] = {"type": "price_details", "price_details": {"price": "price_seat"}}
        line["parent"] = {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "subscription": "sub_1", "subscription_item": "si_1", "proration": proration,
            },
        }  # fmt: skip
    else:
        line.update(
            type="subscription", subscription="sub_1", subscription_item="si_1",
            price={"id": "price_seat", "object": "price"}, proration=proration,
        )  # fmt: skip
    return line


def _invoice(n: int, lines: list[dict[str, Any]], *, basil: bool) -> dict[str, Any]:
    inv: dict[str, Any] = {
        "id": f"in_{n}",
        "object": "invoice",
        "customer": "cus_1",
        "currency": "usd",
        "status": "paid",
        "amount_due": 1000,
        "created": T0 + n * 30 * DAY,
        "livemode": False,
        "lines": {"object": "list", "has_more": False, "data": lines},
    }
    if basil:
        inv["parent"] = {"type": "subscription_details",
                         "subscription_details": {"subscription": "sub_1"}}  # fmt: skip
    else:
        inv["subscription"] = "sub_1"
    return inv


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = warehouse.connect(":memory:")
    yield c
    c.close()


def _build(con: duckdb.DuckDBPyConnection, sub: dict[str, Any], invoices: list[Any]) -> None:
    v = Version("list", FETCHED, 0, "list", None)
    land(con, "subscription", [(sub, v)], FETCHED)
    land(con, "invoice", [(i, v) for i in invoices], FETCHED)
    normalise(con, None, full=True)
    build_history(con, full=True)


def _items(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT valid_from, valid_to, quantity FROM history_subscription_items ORDER BY valid_from"
    ).fetchall()


@pytest.mark.parametrize("basil", [True, False], ids=["basil", "pre-basil"])
def test_seats_before_the_first_extract_come_from_the_invoice_lines(
    con: duckdb.DuckDBPyConnection, basil: bool
) -> None:
    # Billed 10 seats for three periods, then 6 (a downgrade 60+ days before the extract).
    quantities = [10, 10, 10, 6, 6, 6]
    invoices = [
        _invoice(n, [_line(T0 + n * 30 * DAY, q, basil=basil)], basil=basil)
        for n, q in enumerate(quantities)
    ]
    _build(con, _sub(6), invoices)
    assert _items(con) == [
        (_ts(T0), _ts(T0 + 90 * DAY), 10),
        # Today's state holds from the last period billed before it was read.
        (_ts(T0 + 90 * DAY), None, 6),
    ]
    statuses = con.execute("SELECT DISTINCT status FROM history_subscriptions").fetchall()
    assert statuses == [("active",)]


def test_an_unused_time_line_is_not_a_state(con: duckdb.DuckDBPyConnection) -> None:
    """The negative proration line credits the old item's unused time: it names what
    was given up, not what holds."""
    credit = _line(T0 + 45 * DAY, 3, basil=True, proration=True)
    credit["amount"] = -3000
    invoices = [
        _invoice(0, [_line(T0, 10, basil=True)], basil=True),
        _invoice(1, [_line(T0 + 30 * DAY, 10, basil=True), credit], basil=True),
    ]
    _build(con, _sub(10), invoices)
    assert _items(con) == [(_ts(T0), None, 10)]


def test_a_trial_before_the_first_invoice_paid_is_trialing(con: duckdb.DuckDBPyConnection) -> None:
    invoices = [
        _invoice(n, [_line(T0 + n * 30 * DAY, 5, basil=True)], basil=True) for n in range(3)
    ]
    _build(con, _sub(5, trial_end=T0 + 30 * DAY), invoices)
    rows = con.execute(
        "SELECT valid_from, status FROM history_subscriptions ORDER BY valid_from"
    ).fetchall()
    assert rows[0] == (_ts(T0), "trialing")
    assert rows[1] == (_ts(T0 + 30 * DAY), "active")


def test_a_subscription_seen_canceled_keeps_its_end_and_its_billed_seats(
    con: duckdb.DuckDBPyConnection,
) -> None:
    end = T0 + 100 * DAY
    invoices = [
        _invoice(n, [_line(T0 + n * 30 * DAY, q, basil=True)], basil=True)
        for n, q in enumerate([8, 8, 4, 4])
    ]
    _build(con, _sub(4, status="canceled", canceled_at=end, ended_at=end), invoices)
    subs = con.execute(
        "SELECT valid_from, status FROM history_subscriptions ORDER BY valid_from"
    ).fetchall()
    assert subs[-1] == (_ts(end), "canceled")
    assert all(s == "active" for _, s in subs[:-1])
    assert [q for _, _, q in _items(con)] == [8, 4]


def test_a_cancellation_at_period_end_was_scheduled_from_its_request(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Stripe: "If the subscription was canceled with cancel_at_period_end, canceled_at
    will reflect the time of the most recent update request, not the end of the
    subscription period when the subscription is automatically moved to a canceled
    state." A backfill that sees it canceled still knows it was cancelling before."""
    asked, end = T0 + 75 * DAY, T0 + 90 * DAY
    invoices = [
        _invoice(n, [_line(T0 + n * 30 * DAY, 3, basil=True)], basil=True) for n in range(3)
    ]
    sub = _sub(3, status="canceled", cancel_at_period_end=True, canceled_at=asked, ended_at=end)
    _build(con, sub, invoices)
    rows = con.execute(
        "SELECT valid_from, valid_to, status, cancel_at_period_end FROM history_subscriptions"
        " ORDER BY valid_from"
    ).fetchall()
    assert rows[-2:] == [
        (_ts(asked), _ts(end), "active", True),
        (_ts(end), None, "canceled", True),
    ]
    assert not any(flag for _, _, _, flag in rows[:-2])


def test_a_change_mid_period_starts_at_its_proration_line(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """A quantity change with Stripe's default proration_behavior (create_prorations)
    bills "Unused time" (negative) and "Remaining time" lines on the next invoice, both
    from the change to the period's end: the new seats hold from the change."""
    change = T0 + 45 * DAY
    unused = _line(change, 10, basil=True, proration=True)
    unused["amount"] = -5000
    remaining = _line(change, 4, basil=True, proration=True)
    invoices = [
        _invoice(0, [_line(T0, 10, basil=True)], basil=True),
        _invoice(1, [_line(T0 + 30 * DAY, 10, basil=True)], basil=True),
        _invoice(2, [_line(T0 + 60 * DAY, 4, basil=True), unused, remaining], basil=True),
    ]
    _build(con, _sub(4), invoices)
    assert _items(con) == [(_ts(T0), _ts(change), 10), (_ts(change), None, 4)]


def test_a_trial_that_billed_nothing_is_trialing_until_its_end(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """A trial bills no period: the first invoice comes at ``trial_end``. Seen active
    later, the subscription was trialing (zero MRR) from ``trial_start``."""
    trial_end = T0 + 14 * DAY
    invoices = [
        _invoice(n, [_line(trial_end + n * 30 * DAY, 2, basil=True)], basil=True) for n in range(3)
    ]
    _build(con, _sub(2, trial_start=T0, trial_end=trial_end), invoices)
    rows = con.execute(
        "SELECT valid_from, status FROM history_subscriptions ORDER BY valid_from"
    ).fetchall()
    assert rows[0] == (_ts(T0), "trialing")
    assert rows[1] == (_ts(trial_end), "active")


def test_a_subscription_seen_cancelling_was_not_cancelling_before_its_request(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Listed active with ``cancel_at_period_end`` and ``canceled_at`` (the request): the
    scheduled cancellation holds from the request, not from the subscription's start."""
    asked = T0 + 50 * DAY
    invoices = [_invoice(0, [_line(T0, 3, basil=True)], basil=True)]
    _build(con, _sub(3, cancel_at_period_end=True, canceled_at=asked), invoices)
    rows = con.execute(
        "SELECT valid_from, status, cancel_at_period_end FROM history_subscriptions"
        " ORDER BY valid_from"
    ).fetchall()
    assert rows == [(_ts(T0), "active", False), (_ts(asked), "active", True)]


def _sub2_items(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT valid_from, valid_to, quantity FROM history_subscription_items "
        "WHERE subscription_id = 'sub_2' ORDER BY valid_from"
    ).fetchall()


@pytest.mark.parametrize("chunked", [False, True], ids=["build_history", "rebuild_core"])
def test_a_line_naming_another_subscription_reaches_it_when_only_that_one_is_rebuilt(
    con: duckdb.DuckDBPyConnection, chunked: bool
) -> None:
    """A line is its own subscription's (``parent.subscription_item_details.subscription``,
    before basil ``subscription``), whatever the invoice's subscription. When only that
    other subscription is rebuilt (a new version of it, nothing new on the invoice), its
    history still reads the line: the rebuild reads its own invoices' lines and those of
    invoices whose lines name another subscription (``core_invoices.other_subscriptions``),
    not every invoice's, and must find it there."""

    def foreign(start: int) -> dict[str, Any]:
        line = _line(start, 9, basil=True)
        line["id"] = f"il_foreign_{start}"
        line["parent"]["subscription_item_details"].update(
            subscription="sub_2", subscription_item="si_2"
        )
        return line

    # sub_2's two billed periods (9 seats) on sub_1's invoices, then 4 seats today
    invoices = [
        _invoice(0, [_line(T0, 10, basil=True), foreign(T0)], basil=True),
        _invoice(1, [_line(T0 + 30 * DAY, 10, basil=True), foreign(T0 + 30 * DAY)], basil=True),
    ]
    sub2 = _sub(4)
    sub2["id"] = "sub_2"
    sub2["items"]["data"][0]["id"] = "si_2"
    v = Version("list", FETCHED, 0, "list", None)
    land(con, "subscription", [(sub2, v)], FETCHED)
    _build(con, _sub(10), invoices)
    assert con.execute(
        "SELECT invoice_id, other_subscriptions FROM core_invoices ORDER BY invoice_id"
    ).fetchall() == [("in_0", ["sub_2"]), ("in_1", ["sub_2"])]
    whole = _sub2_items(con)
    assert whole[0] == (_ts(T0), _ts(T0 + 30 * DAY), 9)  # the foreign line's 9 seats

    # only sub_2 is dirty: its history redone from what is stored
    con.execute("DELETE FROM history_subscription_items WHERE subscription_id = 'sub_2'")
    con.execute("DELETE FROM history_subscriptions WHERE subscription_id = 'sub_2'")
    con.execute("DELETE FROM stripe_dirty")
    con.execute("INSERT INTO stripe_dirty VALUES ('subscription', 'sub_2')")
    if chunked:
        rebuild_core(con)
    else:
        build_history(con)
    assert _sub2_items(con) == whole


def test_an_invoice_stored_before_its_other_subscriptions_were_known_is_read(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """A row the migration could not fill (NULL: unknown) is read like one naming other
    subscriptions, so a rebuild of one subscription never misses its lines."""
    invoices = [_invoice(n, [_line(T0 + n * 30 * DAY, q, basil=True)], basil=True)
                for n, q in enumerate([10, 10, 6])]  # fmt: skip
    _build(con, _sub(6), invoices)
    whole = _items(con)
    con.execute("UPDATE core_invoices SET other_subscriptions = NULL")
    con.execute("UPDATE core_invoices SET subscription_id = 'sub_other'")  # not sub_1's
    con.execute("DELETE FROM history_subscription_items")
    con.execute("DELETE FROM history_subscriptions")
    con.execute("DELETE FROM stripe_dirty")
    con.execute("INSERT INTO stripe_dirty VALUES ('subscription', 'sub_1')")
    build_history(con)
    assert _items(con) == whole


def test_the_migration_fills_other_subscriptions_of_the_invoices_already_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 109 adds ``core_invoices.other_subscriptions`` and fills it for the rows
    a warehouse already holds, with core's own expression (a full rebuild gives the same)."""
    from churn.warehouse import connection

    every = connection.migrations()
    monkeypatch.setattr(connection, "migrations", lambda: [m for m in every if m.version < 109])
    db = tmp_path / "w.duckdb"
    con = connection.connect(db)
    line = _line(T0, 9, basil=False)
    line["subscription"] = "sub_2"
    invoices = [_invoice(0, [_line(T0, 10, basil=False), line], basil=False),
                _invoice(1, [_line(T0, 10, basil=True)], basil=True),
                {**_invoice(2, [], basil=True), "lines": None}]  # fmt: skip
    land(con, "invoice", [(i, Version("list", FETCHED, 0, "list", None)) for i in invoices],
         FETCHED)  # fmt: skip
    con.execute("INSERT INTO core_invoices (invoice_id) SELECT id FROM raw_stripe_invoice")
    con.close()
    monkeypatch.setattr(connection, "migrations", lambda: every)
    con = connection.connect(db)
    migrated = con.execute(
        "SELECT invoice_id, other_subscriptions FROM core_invoices ORDER BY invoice_id"
    ).fetchall()
    assert migrated == [("in_0", ["sub_2"]), ("in_1", []), ("in_2", [])]
    normalise(con, None, full=True)
    assert (
        con.execute(
            "SELECT invoice_id, other_subscriptions FROM core_invoices ORDER BY invoice_id"
        ).fetchall()
        == migrated
    )
    con.close()
