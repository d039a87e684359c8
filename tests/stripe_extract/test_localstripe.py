"""The extract against localstripe: backfill, events, reconciliation, through the real SDK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.pipelines.stripe.extract import StripeExtractResult, extract_stripe

from .conftest import CountingClient, LocalStripe, build_world, list_ids, stripe_settings

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("localstripe-scenario")]


def _run(db: Path, base: str, **kw: Any) -> tuple[StripeExtractResult, CountingClient]:
    http = CountingClient()
    con = warehouse.connect(db)
    try:
        settings = stripe_settings(db, base, events_order="oldest_first", events_overlap_seconds=1)
        result = extract_stripe(settings, con, progress=False, http_client=http, **kw)
    finally:
        con.close()
    return result, http


def _ids(con: duckdb.DuckDBPyConnection, table: str, where: str = "TRUE") -> set[str]:
    return {r[0] for r in con.execute(f"SELECT id FROM {table} WHERE {where}").fetchall()}


def _sub(con: duckdb.DuckDBPyConnection, sub_id: str) -> tuple[Any, ...]:
    row = con.execute(
        "SELECT s.status, s.cancel_at_period_end, i.price_id, i.quantity "
        "FROM core_subscriptions s JOIN core_subscription_items i USING (subscription_id) "
        "WHERE subscription_id = ?",
        [sub_id],
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_backfill_events_and_reconcile(localstripe: LocalStripe, tmp_path: Path) -> None:
    c = localstripe.client()
    localstripe.reset()
    # The world's own events fall outside the first incremental read (it overlaps the
    # cursor by a second): stamped 5 s early on localstripe's clock, not waited out.
    localstripe.shift_clock(-5)
    world = build_world(c)
    localstripe.shift_clock(0)
    db = tmp_path / "w.duckdb"

    # Backfill lands every object the API lists.
    result, http = _run(db, localstripe.base)
    assert result.mode == "backfill"
    assert result.api_calls == len(http.paths)
    con = duckdb.connect(str(db), read_only=True)
    try:
        # The list's customers, and from the events Stripe keeps (30 days, read by the
        # backfill too) the one deleted before any extract, kept as deleted.
        assert _ids(con, "raw_stripe_customer", "NOT is_deleted") == list_ids(c, "/v1/customers")
        assert _ids(con, "raw_stripe_customer", "is_deleted") == {world.deleted_customer}
        assert _ids(con, "raw_stripe_subscription") == list_ids(
            c, "/v1/subscriptions", status="all"
        )
        assert _ids(con, "raw_stripe_invoice") == list_ids(c, "/v1/invoices")
        assert _ids(con, "raw_stripe_charge") == list_ids(c, "/v1/charges")
        assert _ids(con, "raw_stripe_price") == set(world.plans)
        assert _ids(con, "raw_stripe_product") == list_ids(c, "/v1/products")
        assert len(_ids(con, "raw_stripe_customer")) >= 15
        # the default payment methods came embedded: no call per customer
        assert con.execute("SELECT count(*) FROM core_payment_methods").fetchone() == (
            len(world.customers) - 1,
        )
        assert not any("/payment_methods" in p for p in http.paths)
        statuses = dict(
            con.execute("SELECT subscription_id, status FROM core_subscriptions").fetchall()
        )
        assert statuses[world.subscriptions["sub0"]] == "canceled"
        failed = con.execute(
            "SELECT status, attempted, amount_due - amount_paid > 0 FROM core_invoices "
            "WHERE customer_id = ?",
            [world.declining_customer],
        ).fetchall()
        assert failed == [("open", True, True)]
        assert {
            q
            for (q,) in con.execute(
                "SELECT DISTINCT quantity FROM core_subscription_items"
            ).fetchall()
        } >= {1, 2, 3, 4, 5}
        assert {
            i
            for (i,) in con.execute(
                "SELECT DISTINCT recurring_interval FROM core_prices"
            ).fetchall()
        } == {"month", "year"}
    finally:
        con.close()

    # Changes: some emit events in localstripe, some do not.
    # Past the second of the last list fetch (events are stamped to the second): the
    # changes are stamped 2 s on, on localstripe's clock, instead of waiting for the wall
    # clock's second to turn.
    localstripe.shift_clock(2)
    new_customer = c.v1.customers.create({"email": "new@late.example", "name": "Late"}).id
    c.v1.subscriptions.cancel(world.subscriptions["sub4"])
    gone = world.customers[5]
    c.v1.customers.delete(gone)
    upgrade, downgrade, more, cape = (world.subscriptions[f"sub{i}"] for i in (6, 7, 9, 10))
    c.v1.subscriptions.update(
        upgrade, {"items": [{"id": world.items["sub6"], "plan": "pro-yearly", "quantity": 1}]}
    )
    c.v1.subscriptions.update(
        downgrade, {"items": [{"id": world.items["sub7"], "plan": "basic-monthly", "quantity": 3}]}
    )
    c.v1.subscriptions.update(
        more, {"items": [{"id": world.items["sub9"], "plan": "pro-monthly", "quantity": 9}]}
    )
    c.v1.subscriptions.update(cape, {"cancel_at_period_end": True})

    con = warehouse.connect(db)
    before = {s: _sub(con, s) for s in (upgrade, downgrade, more, cape)}
    con.close()
    assert before[upgrade][2] == "pro-monthly"  # sub6: plans[6 % 3]
    assert before[downgrade][2] == "pro-yearly"

    # Incremental: exactly what emitted events, in one events call.
    result, http = _run(db, localstripe.base)
    assert result.mode == "incremental"
    assert http.paths == ["v1/events"], result.counts
    con = warehouse.connect(db)
    try:
        assert new_customer in _ids(con, "raw_stripe_customer")
        assert _sub(con, world.subscriptions["sub4"])[0] == "canceled"
        assert con.execute(
            "SELECT is_deleted FROM core_customers WHERE customer_id = ?", [gone]
        ).fetchone() == (True,)
        # localstripe sends no event for these: unchanged until a reconciliation
        assert {s: _sub(con, s) for s in before} == before
    finally:
        con.close()

    # Nothing new: one events call, no re-list.
    result, http = _run(db, localstripe.base)
    assert http.paths == ["v1/events"] and result.api_calls == 1
    assert result.counts.get("events", 0) == 0

    # Reconcile lands the rest and counts each difference.
    result, http = _run(db, localstripe.base, reconcile=True)
    assert result.reconciled
    assert result.counts["reconcile_changed_subscription"] >= 4
    con = warehouse.connect(db)
    try:
        assert _sub(con, upgrade)[2:] == ("pro-yearly", 1)
        assert _sub(con, downgrade)[2:] == ("basic-monthly", 3)
        assert _sub(con, more)[2:] == ("pro-monthly", 9)
        assert _sub(con, cape)[1] is True
        # the history keeps both states, in order
        items = con.execute(
            "SELECT price_id, quantity, valid_to IS NULL FROM history_subscription_items "
            "WHERE subscription_id = ? ORDER BY valid_from",
            [more],
        ).fetchall()
        assert items == [("pro-monthly", before[more][3], False), ("pro-monthly", 9, True)]
        flags = con.execute(
            "SELECT cancel_at_period_end FROM history_subscriptions "
            "WHERE subscription_id = ? ORDER BY valid_from",
            [cape],
        ).fetchall()
        assert flags == [(False,), (True,)]
    finally:
        con.close()
    # a second reconciliation finds nothing more
    result, _ = _run(db, localstripe.base, reconcile=True)
    # (localstripe finalizes draft invoices lazily, without an event: invoices may move)
    diffs = {
        k: v
        for k, v in result.counts.items()
        if k.startswith("reconcile_") and v and k.endswith(("_subscription", "_customer"))
    }
    assert diffs == {}
