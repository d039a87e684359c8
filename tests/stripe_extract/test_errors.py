"""Retries, failures and refusals, against a tiny scripted loopback Stripe."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from churn import warehouse
from churn.errors import ModeMismatchError, PartialRunError, StripeRequestError
from churn.pipelines.stripe import extract as extract_mod
from churn.pipelines.stripe.client import StripeApi, make_stripe_client
from churn.pipelines.stripe.extract import extract_stripe
from churn.settings import Settings, StripeSettings
from stripe_extract.scripted import EMPTY, Script, scripted_server

pytestmark = pytest.mark.slow

KEY = "sk_test_secret_never_shown"
#: A guard against a hang, not a speed check: each wait ends on a request's answer.
HANG = 600.0


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    with scripted_server(script) as base:
        yield base, script


def _api(base: str, **kw: Any) -> tuple[StripeApi, list[float]]:
    settings = StripeSettings(api_key=KEY, api_base=base, **kw)
    slept: list[float] = []
    return StripeApi(make_stripe_client(settings), settings, sleep=slept.append), slept


def test_429_waits_for_retry_after(server: tuple[str, Script]) -> None:
    base, script = server
    script.add(
        "/v1/customers", 429, _error("invalid_request_error", "Too many"), {"Retry-After": "7"}
    )
    api, slept = _api(base)
    assert api.get("customer", "/v1/customers", {"limit": 100}) == EMPTY
    assert slept == [7.0]
    assert api.calls == 2


def test_5xx_backs_off_then_succeeds(server: tuple[str, Script]) -> None:
    base, script = server
    for status in (500, 502, 503):
        script.add("/v1/invoices", status, _error("api_error", "boom"))
    api, slept = _api(base, backoff_base_seconds=0.5)
    assert api.get("invoice", "/v1/invoices", {}) == EMPTY
    assert slept == [0.5, 1.0, 2.0]


def test_5xx_retries_are_bounded(server: tuple[str, Script]) -> None:
    base, script = server
    for _ in range(10):
        script.add("/v1/charges", 503, _error("api_error", "unavailable"))
    api, slept = _api(base, max_retries=2, backoff_max_seconds=0.75)
    with pytest.raises(StripeRequestError) as info:
        api.get("charge", "/v1/charges", {"limit": 100})
    assert api.calls == 3 and slept == [0.5, 0.75]
    message = str(info.value)
    assert "stream charge" in message and "GET /v1/charges" in message
    assert "after 2 retries" in message and info.value.http_status == 503


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error")]
)
def test_client_errors_fail_at_once_naming_the_stream(
    server: tuple[str, Script], status: int, kind: str
) -> None:
    base, script = server
    script.add("/v1/subscriptions", status, _error(kind, f"Invalid API Key provided: {KEY}"))
    api, slept = _api(base)
    with pytest.raises(StripeRequestError) as info:
        api.get("subscription", "/v1/subscriptions", {"status": "all"})
    assert api.calls == 1 and slept == []
    message = str(info.value)
    assert "stream subscription" in message and "GET /v1/subscriptions" in message
    assert str(status) in message and KEY not in message


def _settings(db: Path, base: str, key: str = KEY) -> Settings:
    return Settings(
        db=db,
        stripe=StripeSettings(
            api_key=key,
            api_base=base,
            max_retries=1,
            backoff_base_seconds=0,
            reconcile_every_hours=0,
        ),
    )


def _product(i: int, live: bool = False) -> dict[str, Any]:
    return {
        "id": f"prod_{i}",
        "object": "product",
        "name": f"P{i}",
        "created": 1_700_000_000,
        "livemode": live,
        "active": True,
    }


def test_partial_run_says_what_landed_and_resumes(
    server: tuple[str, Script], db_path: Path
) -> None:
    base, script = server
    script.add("/v1/products", 200, {**EMPTY, "data": [_product(1), _product(2)]})
    script.add("/v1/prices", 200, EMPTY)
    script.add("/v1/customers", 400, _error("invalid_request_error", "No such parameter"))
    con = warehouse.connect(db_path)
    with pytest.raises(PartialRunError) as info:
        extract_stripe(_settings(db_path, base), con, progress=False)
    message = str(info.value)
    assert "stream customer" in message and "GET /v1/customers" in message
    assert "objects_product=2" in message
    assert con.execute("SELECT status FROM run_log").fetchall() == [("partial",)]
    assert con.execute("SELECT count(*) FROM core_products").fetchone() == (2,)

    # The rerun resumes at customers: the streams done (products, prices) are not listed
    # again. (The streams left are read concurrently, the events beside them: which
    # request comes first is the threads' order, not the backfill's.)
    script.requests.clear()
    result = extract_stripe(_settings(db_path, base), con, progress=False)
    assert "/v1/products" not in script.requests and "/v1/prices" not in script.requests
    assert "/v1/customers" in script.requests
    assert result.mode == "backfill"
    con.close()


def test_live_key_with_test_objects_is_refused(server: tuple[str, Script], db_path: Path) -> None:
    base, script = server
    script.add("/v1/products", 200, {**EMPTY, "data": [_product(1, live=False)]})
    con: duckdb.DuckDBPyConnection = warehouse.connect(db_path)
    with pytest.raises(ModeMismatchError, match="live-mode key"):
        extract_stripe(_settings(db_path, base, key="rk_live_abc"), con, progress=False)
    assert con.execute("SELECT count(*) FROM raw_stripe_product").fetchone() == (0,)
    con.close()


def _customer(i: int, name: str) -> dict[str, Any]:
    return {
        "id": f"cus_{i}",
        "object": "customer",
        "name": name,
        "created": 1_700_000_000,
        "livemode": False,
        "email": f"a@c{i}.example",
        "invoice_settings": {},
    }


def _page(*objects: dict[str, Any]) -> dict[str, Any]:
    return {**EMPTY, "data": list(objects)}


def _backfilled(db_path: Path, base: str, script: Script) -> duckdb.DuckDBPyConnection:
    script.add("/v1/customers", 200, _page(_customer(1, "One"), _customer(2, "Two")))
    con = warehouse.connect(db_path)
    assert extract_stripe(_settings(db_path, base), con, progress=False).mode == "backfill"
    return con


def test_stale_cursor_forces_a_reconciliation(server: tuple[str, Script], db_path: Path) -> None:
    base, script = server
    con = _backfilled(db_path, base, script)
    # The events cursor is older than Stripe keeps events: events alone would leave a gap.
    con.execute(
        "UPDATE sync_state SET details = json_object('polled_at', "
        "strftime(now()::TIMESTAMP - INTERVAL 40 DAY, '%Y-%m-%dT%H:%M:%S')) "
        "WHERE stream = 'stripe:events'"
    )
    script.add("/v1/customers", 200, _page(_customer(1, "One renamed"), _customer(3, "Three")))
    script.requests.clear()
    result = extract_stripe(_settings(db_path, base), con, progress=False)
    assert result.reconciled and script.requests[0] == "/v1/events"
    assert "/v1/customers" in script.requests
    assert result.counts["reconcile_new_customer"] == 1
    assert result.counts["reconcile_changed_customer"] == 1
    assert result.counts["reconcile_deleted_customer"] == 1
    rows = con.execute(
        "SELECT customer_id, name, is_deleted FROM core_customers ORDER BY 1"
    ).fetchall()
    assert rows == [
        ("cus_1", "One renamed", False),
        ("cus_2", "Two", True),
        ("cus_3", "Three", False),
    ]

    # Now current: the next run reads events only.
    script.requests.clear()
    result = extract_stripe(_settings(db_path, base), con, progress=False)
    assert not result.reconciled and script.requests == ["/v1/events"]
    con.close()


def test_reconciliation_runs_on_its_cadence(server: tuple[str, Script], db_path: Path) -> None:
    base, script = server
    con = _backfilled(db_path, base, script)
    settings = _settings(db_path, base).with_overrides(stripe={"reconcile_every_hours": 1})
    script.requests.clear()
    assert not extract_stripe(settings, con, progress=False).reconciled
    con.execute(
        "UPDATE sync_state SET cursor_ts = now()::TIMESTAMP - INTERVAL 2 HOUR "
        "WHERE stream = 'stripe:reconcile'"
    )
    assert extract_stripe(settings, con, progress=False).reconciled
    assert not extract_stripe(settings, con, progress=False).reconciled
    con.close()


def test_resume_after_a_vanished_object_lists_the_stream_again(
    server: tuple[str, Script], db_path: Path
) -> None:
    base, script = server
    script.add("/v1/customers", 200, {**_page(_customer(1, "One")), "has_more": True})
    script.add("/v1/customers", 500, _error("api_error", "down"))
    script.add("/v1/customers", 500, _error("api_error", "down"))
    con = warehouse.connect(db_path)
    with pytest.raises(PartialRunError):
        extract_stripe(_settings(db_path, base), con, progress=False)
    # cus_1 was deleted meanwhile: Stripe refuses starting_after=cus_1.
    script.add("/v1/customers", 400, _error("invalid_request_error", "No such customer: cus_1"))
    script.add("/v1/customers", 200, _page(_customer(2, "Two")))
    extract_stripe(_settings(db_path, base), con, progress=False)
    assert con.execute("SELECT id FROM raw_stripe_customer ORDER BY 1").fetchall() == [
        ("cus_1",),
        ("cus_2",),
    ]
    con.close()


def test_cli_partial_run_exits_3_naming_the_stream(
    server: tuple[str, Script], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from churn.cli import app

    base, script = server
    script.add("/v1/products", 200, _page(_product(1)))
    script.add("/v1/customers", 401, _error("authentication_error", "Invalid API Key"))
    for name, value in {
        "CHURN_DB": str(db_path),
        "STRIPE_API_KEY": KEY,
        "STRIPE_API_BASE": base,
        "STRIPE_MAX_RETRIES": "0",
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["extract", "stripe", "--no-progress"])
    assert result.exit_code == 3
    assert "stream customer" in result.output and "objects_product=1" in result.output
    assert KEY not in result.output


def test_full_lists_every_stream_again(server: tuple[str, Script], db_path: Path) -> None:
    base, script = server
    con = _backfilled(db_path, base, script)
    script.add("/v1/customers", 200, _page(_customer(1, "One again")))
    script.requests.clear()
    result = extract_stripe(_settings(db_path, base), con, progress=False, full=True)
    assert result.mode == "backfill"
    assert {"/v1/products", "/v1/customers", "/v1/subscriptions", "/v1/invoices"} <= set(
        script.requests
    )
    # The events Stripe still keeps: "List events, going back up to 30 days" is history
    # a first (or full) run has too. Read once, beside the lists (an endpoint of its own)
    # and applied after them: newer over older, so the order of the reads does not matter.
    assert script.requests.count("/v1/events") == 1
    assert con.execute(
        "SELECT name FROM core_customers WHERE customer_id = 'cus_1'"
    ).fetchone() == ("One again",)
    con.close()


def test_reconciliation_lands_page_by_page_and_deletes_only_after_a_whole_listing(
    server: tuple[str, Script], db_path: Path
) -> None:
    base, script = server
    con = _backfilled(db_path, base, script)
    settings = _settings(db_path, base).with_overrides(stripe={"page_size": 1})
    script.add("/v1/customers", 200, {**_page(_customer(1, "One renamed")), "has_more": True})
    script.add("/v1/customers", 400, _error("invalid_request_error", "No such parameter"))
    with pytest.raises(PartialRunError, match="stream customer"):
        extract_stripe(settings, con, reconcile=True, progress=False)
    # The first page landed in its own transaction; nothing is taken as gone yet.
    assert con.execute(
        "SELECT customer_id, name, is_deleted FROM core_customers ORDER BY 1"
    ).fetchall() == [("cus_1", "One renamed", False), ("cus_2", "Two", False)]

    script.add("/v1/customers", 200, {**_page(_customer(1, "One renamed")), "has_more": True})
    script.add("/v1/customers", 200, _page(_customer(3, "Three")))
    result = extract_stripe(settings, con, reconcile=True, progress=False)
    counts = {k: v for k, v in result.counts.items() if k.endswith("_customer")}
    assert counts == {
        "objects_customer": 2,
        "reconcile_new_customer": 1,
        "reconcile_changed_customer": 0,
        "reconcile_deleted_customer": 1,
    }
    assert con.execute(
        "SELECT customer_id, is_deleted FROM core_customers ORDER BY 1"
    ).fetchall() == [("cus_1", False), ("cus_2", True), ("cus_3", False)]
    con.close()


def _item(i: int, price: str, quantity: int) -> dict[str, Any]:
    return {
        "id": f"si_{i}",
        "object": "subscription_item",
        "price": {"id": price, "object": "price", "currency": "usd"},
        "quantity": quantity,
        "created": 1_700_000_000 + i,
    }


def _subscription_with_more_items(quantity: int) -> dict[str, Any]:
    return {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": "active",
        "created": 1_700_000_000,
        "livemode": False,
        "items": {
            "object": "list",
            "data": [_item(1, "price_a", quantity)],
            "has_more": True,
            "total_count": 3,
            "url": "/v1/subscription_items?subscription=sub_1",
        },
    }


def test_items_beyond_the_embedded_page_are_fetched(
    server: tuple[str, Script], db_path: Path
) -> None:
    base, script = server
    script.add("/v1/subscriptions", 200, _page(_subscription_with_more_items(1)))
    script.add(
        "/v1/subscription_items",
        200,
        {**_page(_item(1, "price_a", 1), _item(2, "price_b", 2)), "has_more": True},
    )
    script.add("/v1/subscription_items", 200, _page(_item(3, "price_c", 3)))
    con = warehouse.connect(db_path)
    extract_stripe(_settings(db_path, base), con, progress=False)
    items = "SELECT item_id, price_id, quantity FROM core_subscription_items ORDER BY 1"
    assert con.execute(items).fetchall() == [
        ("si_1", "price_a", 1),
        ("si_2", "price_b", 2),
        ("si_3", "price_c", 3),
    ]

    # An event's subscription: its own first page, the rest as listed now.
    now = int(time.time())
    event = {
        "id": "evt_1",
        "object": "event",
        "type": "customer.subscription.updated",
        "created": now,
        "livemode": False,
        "data": {"object": _subscription_with_more_items(5)},
    }
    script.add("/v1/events", 200, _page(event))
    script.add(
        "/v1/subscription_items",
        200,
        _page(_item(1, "price_a", 1), _item(2, "price_b", 2), _item(4, "price_d", 4)),
    )
    extract_stripe(_settings(db_path, base), con, progress=False)
    assert con.execute(items).fetchall() == [
        ("si_1", "price_a", 5),
        ("si_2", "price_b", 2),
        ("si_4", "price_d", 4),
    ]
    stored = con.execute("SELECT payload->>'$.data.object.items.has_more' FROM raw_stripe_event")
    assert stored.fetchall() == [("true",)]  # the event is kept as Stripe sent it
    con.close()


def _card(pid: str, exp_year: int) -> dict[str, Any]:
    return {
        "id": pid,
        "object": "payment_method",
        "type": "card",
        "customer": "cus_1",
        "card": {"brand": "visa", "last4": "4242", "exp_month": 4, "exp_year": exp_year},
        "created": 1_700_000_000,
        "livemode": False,
    }


def test_payment_methods_set_on_subscriptions_and_legacy_cards_come_embedded(
    server: tuple[str, Script], db_path: Path
) -> None:
    base, script = server
    legacy = {"id": "card_1", "object": "card", "brand": "Visa", "last4": "0005",
              "exp_month": 1, "exp_year": 2027, "customer": "cus_1"}  # fmt: skip
    script.add("/v1/customers", 200, _page({**_customer(1, "One"), "default_source": legacy}))
    sub = {**_subscription_with_more_items(1), "default_payment_method": _card("pm_sub", 2028)}
    sub["items"] = {**sub["items"], "has_more": False}
    script.add("/v1/subscriptions", 200, _page(sub))
    con = warehouse.connect(db_path)
    extract_stripe(_settings(db_path, base), con, progress=False)
    # The streams are listed concurrently: their first requests come in either order.
    [customers] = [q for q in script.queries if q.startswith("/v1/customers?")]
    [subscriptions] = [q for q in script.queries if q.startswith("/v1/subscriptions?")]
    assert "expand[0]=data.default_payment_method" in subscriptions
    assert "data.default_source" in customers
    assert con.execute(
        "SELECT payment_method_id, card_exp_year FROM core_payment_methods ORDER BY 1"
    ).fetchall() == [("card_1", 2027), ("pm_sub", 2028)]
    assert con.execute("SELECT default_payment_method FROM core_subscriptions").fetchall() == [
        ("pm_sub",)
    ]
    assert con.execute("SELECT default_source FROM core_customers").fetchall() == [("card_1",)]
    con.close()


def test_a_refused_expand_lists_without_it(server: tuple[str, Script], db_path: Path) -> None:
    base, script = server
    refused = "This property cannot be expanded (default_payment_method)."
    script.add("/v1/subscriptions", 400, _error("invalid_request_error", refused))
    sub = {**_subscription_with_more_items(1), "default_payment_method": "pm_sub"}
    sub["items"] = {**sub["items"], "has_more": False}
    script.add("/v1/subscriptions", 200, {**_page(sub), "has_more": True})
    script.add("/v1/subscriptions", 200, _page())
    con = warehouse.connect(db_path)
    assert extract_stripe(_settings(db_path, base), con, progress=False).mode == "backfill"
    asked = [q for q in script.queries if q.startswith("/v1/subscriptions")]
    assert len(asked) == 3 and "expand" in asked[0]
    assert not any("expand" in q for q in asked[1:])  # once refused, not asked again
    assert con.execute("SELECT subscription_id FROM core_subscriptions").fetchall() == [("sub_1",)]
    con.close()


def _invoice(i: int, days_old: int, status: str) -> dict[str, Any]:
    return {
        "id": f"in_{i}",
        "object": "invoice",
        "customer": "cus_1",
        "created": int(time.time()) - days_old * 86_400,
        "status": status,
        "currency": "usd",
        "amount_due": 1000,
        "livemode": False,
    }


def test_a_scheduled_reconciliation_relists_recent_invoices_only(
    server: tuple[str, Script], db_path: Path
) -> None:
    """The daily re-list would cost a call per 100 invoices of the whole history; the
    scheduled one asks for the window only and never deletes what it did not ask for. An
    explicit --reconcile re-lists everything."""
    base, script = server
    script.add("/v1/customers", 200, _page(_customer(1, "One")))
    script.add("/v1/invoices", 200, _page(_invoice(2, 5, "open"), _invoice(1, 200, "paid")))
    con = warehouse.connect(db_path)
    settings = _settings(db_path, base).with_overrides(
        stripe={"reconcile_every_hours": 1, "reconcile_window_days": 60}
    )
    extract_stripe(settings, con, progress=False)
    con.execute(
        "UPDATE sync_state SET cursor_ts = now()::TIMESTAMP - INTERVAL 2 HOUR "
        "WHERE stream = 'stripe:reconcile'"
    )
    script.add("/v1/customers", 200, _page(_customer(1, "One")))
    script.add("/v1/invoices", 200, _page(_invoice(2, 5, "paid")))  # the old one not asked
    script.queries.clear()
    result = extract_stripe(settings, con, progress=False)
    asked = [q for q in script.queries if q.startswith("/v1/invoices")]
    assert len(asked) == 1 and "created[gte]=" in asked[0]
    assert not any("created" in q for q in script.queries if q.startswith("/v1/customers"))
    assert result.counts["reconcile_changed_invoice"] == 1
    assert result.counts.get("reconcile_deleted_invoice", 0) == 0

    def state() -> list[tuple[Any, ...]]:
        return con.execute(
            "SELECT id, payload->>'status', is_deleted FROM raw_stripe_invoice ORDER BY id"
        ).fetchall()

    assert state() == [("in_1", "paid", False), ("in_2", "paid", False)]
    # Explicitly asked: the whole history, and what is gone is kept as deleted.
    script.add("/v1/customers", 200, _page(_customer(1, "One")))
    script.add("/v1/invoices", 200, _page(_invoice(2, 5, "paid")))
    script.queries.clear()
    result = extract_stripe(settings, con, reconcile=True, progress=False)
    asked = [q for q in script.queries if q.startswith("/v1/invoices")]
    assert len(asked) == 1 and "created" not in asked[0]
    assert result.counts["reconcile_deleted_invoice"] == 1
    assert state() == [("in_1", "paid", True), ("in_2", "paid", False)]
    con.close()


def test_a_backfill_lands_several_pages_per_transaction(
    server: tuple[str, Script], db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, script = server
    for i in range(1, 6):
        script.add("/v1/customers", 200, {**_page(_customer(i, f"C{i}")), "has_more": i < 5})
    settings = _settings(db_path, base).with_overrides(stripe={"land_batch_pages": 2})
    con = warehouse.connect(db_path)
    with caplog.at_level("DEBUG", logger="churn.pipelines.stripe.extract"):
        extract_stripe(settings, con, progress=False)
    commits = [
        r.getMessage()
        for r in caplog.records
        if "stream customer: page committed" in r.getMessage()
    ]
    assert [m.split("(")[1].split(",")[0] for m in commits] == ["2 pages", "2 pages", "1 pages"]
    assert con.execute("SELECT count(*) FROM raw_stripe_customer").fetchone() == (5,)
    con.close()


def _people_page(n: int) -> dict[str, Any]:
    """A page of customers whose names and emails a customer wrote."""
    return _page(
        *(
            {
                **_customer(i, f"Zoë Customer-{i:04d} Müller"),
                "email": f"zoe.{i:04d}@customer-{i:04d}.example",
                "description": "Invoice notes: " + "private words " * 20,
            }
            for i in range(n)
        )
    )


def test_a_truncated_body_is_retried_within_the_run(server: tuple[str, Script]) -> None:
    """Issue 15: one truncated body (HTTP 200, half a page) failed the extract.

    The SDK raises APIError "Invalid response body from API: <the whole body> (HTTP
    response code was 200)" for a 200 it cannot parse: the request worked, its answer was
    lost on the way, so asking again is safe (every request here is a GET)."""
    base, script = server
    whole = json.dumps(_people_page(3)).encode()
    script.add("/v1/customers", 200, whole[: len(whole) // 2])
    script.add("/v1/customers", 200, b'{"object": "list", "da')
    script.add("/v1/customers", 200, _people_page(3))
    api, slept = _api(base, backoff_base_seconds=0.25)
    page = api.get("customer", "/v1/customers", {"limit": 100})
    assert [c["id"] for c in page["data"]] == ["cus_0", "cus_1", "cus_2"]
    assert api.calls == 3 and api.retries == 2 and slept == [0.25, 0.5]


def test_a_parsed_body_that_is_not_a_stripe_answer_is_retried(server: tuple[str, Script]) -> None:
    """A list without its ``data`` array would read as an empty page (the end of the
    listing, and a backfill marked done with objects missing): asked again instead."""
    base, script = server
    script.add("/v1/customers", 200, {"object": "list", "has_more": True})
    script.add("/v1/customers", 200, _people_page(1))
    api, _ = _api(base, backoff_base_seconds=0)
    assert api.get("customer", "/v1/customers", {})["data"][0]["id"] == "cus_0"
    assert api.calls == 2


def test_truncated_bodies_never_reach_run_log_or_the_logs(
    server: tuple[str, Script], db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15: the whole body (61 KB of customer names and emails) went into
    run_log.error. Errors name the stream, the request and the object id, cut to a bound;
    nothing a customer wrote goes into run_log or a log line."""
    base, script = server
    whole = json.dumps(_people_page(125), ensure_ascii=False).encode()
    assert len(whole) > 61_000
    for _ in range(5):  # more than the retries allow
        script.add("/v1/products", 200, whole[: len(whole) - 100])
    caplog.set_level("DEBUG")
    con = warehouse.connect(db_path)
    try:
        with pytest.raises(StripeRequestError) as info:
            extract_stripe(_settings(db_path, base), con, progress=False)
        rows = con.execute("SELECT error FROM run_log").fetchall()
    finally:
        con.close()
    message = str(info.value)
    assert "stream product" in message and "GET /v1/products" in message
    assert "not valid JSON" in message and len(message) < 500
    for text in [message, *(r[0] or "" for r in rows), caplog.text]:
        assert "Müller" not in text and "@customer-" not in text and "private words" not in text
        assert "Customer-0" not in text
    assert all(len(r[0] or "") < 1000 for r in rows)


def test_a_long_error_message_is_cut_to_a_bound(server: tuple[str, Script]) -> None:
    base, script = server
    script.add("/v1/charges", 400, _error("invalid_request_error", "x" * 5000))
    api, _ = _api(base)
    with pytest.raises(StripeRequestError) as info:
        api.get("charge", "/v1/charges", {})
    assert len(str(info.value)) < 400


def _thin_event(eid: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    return {
        "id": eid,
        "object": "event",
        "type": f"{obj['object']}.updated",
        "created": created,
        "livemode": False,
        "api_version": "2025-09-30.clover",
        "data": {"object": obj},
    }


def test_a_partial_event_object_is_completed_by_a_retrieve(
    server: tuple[str, Script], db_path: Path
) -> None:
    """Issue 15: {id, object} alone replaced the stored customer. The extract retrieves
    the object (GET /v1/customers/<id>) and lands that instead."""
    base, script = server
    con = _backfilled(db_path, base, script)
    now = int(time.time())
    script.add(
        "/v1/events",
        200,
        _page(_thin_event("evt_thin", {"id": "cus_1", "object": "customer"}, now)),
    )
    script.add(
        "/v1/customers/cus_1", 200, {**_customer(1, "One, renamed"), "email": "b@c1.example"}
    )
    result = extract_stripe(_settings(db_path, base), con, progress=False)
    assert result.counts["events_completed_by_retrieve"] == 1
    assert "/v1/customers/cus_1" in script.requests
    got = con.execute("SELECT name, email_domain FROM core_customers WHERE customer_id = 'cus_1'")
    assert got.fetchall() == [("One, renamed", "c1.example")]
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    con.close()


def test_a_partial_object_that_cannot_be_retrieved_is_kept_out(
    server: tuple[str, Script], db_path: Path
) -> None:
    base, script = server
    con = _backfilled(db_path, base, script)
    now = int(time.time())
    script.add(
        "/v1/events",
        200,
        _page(_thin_event("evt_thin", {"id": "cus_2", "object": "customer"}, now)),
    )
    script.add(
        "/v1/customers/cus_2", 404, _error("invalid_request_error", "No such customer: 'cus_2'")
    )
    result = extract_stripe(_settings(db_path, base), con, progress=False)
    assert result.counts["quarantined_partial_events"] == 1
    got = con.execute("SELECT name FROM core_customers WHERE customer_id = 'cus_2'").fetchall()
    assert got == [("Two",)]  # the full payload stays
    rows = con.execute("SELECT source, stream, object_id FROM quarantine").fetchall()
    assert rows == [("stripe_event", "customer", "evt_thin")]
    con.close()


def test_an_incremental_read_fetches_the_next_events_page_while_one_is_staged(
    server: tuple[str, Script], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events' pages come at the endpoint's rate limit; staging each waits on the
    warehouse. The next page is asked for while the first is being staged (the first
    staging waits for that request: one after the other, it would wait in vain), and every
    event of both pages is applied in order."""
    base, script = server
    con = _backfilled(db_path, base, script)
    now = int(time.time())
    # newest first, as Stripe lists them; both after the backfill's listing
    first = _thin_event("evt_2", {**_customer(2, "Two, renamed"), "object": "customer"}, now + 2)
    second = _thin_event("evt_1", {**_customer(1, "One, renamed"), "object": "customer"}, now + 1)
    script.add("/v1/events", 200, {**_page(first), "has_more": True})
    script.add("/v1/events", 200, _page(second))
    asked_twice = threading.Event()
    answer = script.answer
    before = script.requests.count("/v1/events")  # the backfill's own read

    def counting(path: str) -> tuple[int, dict[str, str], Any]:
        got = answer(path)
        if script.requests.count("/v1/events") >= before + 2:
            asked_twice.set()
        return got

    monkeypatch.setattr(script, "answer", counting)
    stage = extract_mod._Run._stage_events
    staged: list[bool] = []

    def waiting(self: Any, batch: Any) -> None:
        staged.append(asked_twice.wait(HANG))
        stage(self, batch)

    monkeypatch.setattr(extract_mod._Run, "_stage_events", waiting)
    result = extract_stripe(_settings(db_path, base), con, progress=False)
    assert result.mode == "incremental"
    assert staged == [True, True]
    assert con.execute("SELECT customer_id, name FROM core_customers ORDER BY 1").fetchall() == [
        ("cus_1", "One, renamed"),
        ("cus_2", "Two, renamed"),
    ]
    con.close()


def test_a_failed_events_page_stops_the_read_and_names_the_request(
    server: tuple[str, Script], db_path: Path
) -> None:
    """A page that fails after one that came: the read raises the request's error (the
    pages are fetched by a thread of their own) and the cursor stays where it was, so the
    rerun reads both again."""
    base, script = server
    con = _backfilled(db_path, base, script)
    (cursor,) = con.execute(
        "SELECT cursor_ts FROM sync_state WHERE stream = 'stripe:events'"
    ).fetchone()
    now = int(time.time())
    event = _thin_event("evt_2", {**_customer(2, "Two, renamed"), "object": "customer"}, now)
    script.add("/v1/events", 200, {**_page(event), "has_more": True})
    script.add("/v1/events", 400, _error("invalid_request_error", "No such event"))
    with pytest.raises(StripeRequestError, match=r"stream events: GET /v1/events"):
        extract_stripe(_settings(db_path, base), con, progress=False)
    assert con.execute(
        "SELECT cursor_ts FROM sync_state WHERE stream = 'stripe:events'"
    ).fetchone() == (cursor,)
    assert con.execute(
        "SELECT name FROM core_customers WHERE customer_id = 'cus_2'"
    ).fetchone() == ("Two",)
    con.close()
