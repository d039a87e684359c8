"""Loads golden-case input rows into a fresh warehouse, with defaults for omitted columns.

A case file: ``{"description", "as_of", "settings"?, "tables": {table: [row, ...]},
"expected": [...]}``. Defaults keep the files to what each case is about.

Links: the signals read ``history_account_links`` (links as of T). A case that gives only
``core_account_links`` gets each of them as its customer's one version (from ``linked_at``,
still in force, so in force at any T), as the link step would have written it; a case about
links over time gives ``history_account_links`` itself.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

GOLDEN = Path(__file__).parent / "golden" / "signals"

DEFAULTS: dict[str, dict[str, Any]] = {
    "history_subscriptions": {
        "valid_to": None,
        "status": "active",
        "currency": "usd",
        "collection_method": "charge_automatically",
        "cancel_at_period_end": False,
    },
    "history_subscription_items": {"valid_to": None, "quantity": 1},
    "core_prices": {
        "currency": "usd",
        "type": "recurring",
        "billing_scheme": "per_unit",
        "recurring_interval": "month",
        "recurring_interval_count": 1,
        "usage_type": "licensed",
    },
    "core_invoices": {"status": "open", "currency": "usd", "attempted": True},
    "core_charges": {"currency": "usd"},
    "core_payment_methods": {"type": "card", "card_brand": "visa", "card_last4": "4242"},
    "history_payment_methods": {
        "valid_to": None,
        "type": "card",
        "card_brand": "visa",
        "card_last4": "4242",
        "is_deleted": False,
    },
    "history_customer_defaults": {"valid_to": None},
    "core_account_links": {"method": "metadata", "linked_at": "2026-01-01T00:00:00"},
    "core_usage": {"source": "golden", "loaded_at": "2026-01-01T00:00:00"},
    "core_usage_history": {"source": "golden"},
    "core_currency_rates": {"is_active": True},
    "raw_stripe_event": {"fetched_at": "2026-01-01T00:00:00", "api_version": "2025-09-30.clover"},
}

JSON_COLUMNS = {("core_prices", "tiers"), ("raw_stripe_event", "payload")}


def load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    case["as_of_dt"] = datetime.fromisoformat(case["as_of"])
    return case


def seed(con: duckdb.DuckDBPyConnection, tables: dict[str, list[dict[str, Any]]]) -> None:
    for table, rows in tables.items():
        for row in rows:
            full = {**DEFAULTS.get(table, {}), **row}
            cols = list(full)
            values = [
                json.dumps(v) if (table, c) in JSON_COLUMNS and v is not None else v
                for c, v in full.items()
            ]
            marks = ", ".join("?" for _ in cols)
            con.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", values)
    if "core_account_links" in tables and "history_account_links" not in tables:
        con.execute(
            "INSERT INTO history_account_links (customer_id, valid_from, valid_to, account_id,"
            " method, detail) SELECT customer_id, linked_at, NULL, account_id, method, detail"
            " FROM core_account_links"
        )


def cases(kind: str) -> list[Path]:
    return sorted((GOLDEN / kind).glob("*.json"))


def seed_two_accounts(con: duckdb.DuckDBPyConnection) -> None:
    """The smallest world that scores: two customers on one price, the second cancelling."""
    seed(
        con,
        {
            "core_prices": [{"price_id": "p1", "unit_amount": 1000}],
            "history_subscriptions": [
                {
                    "subscription_id": f"s{i}",
                    "customer_id": f"c{i}",
                    "valid_from": "2026-01-01",
                    "current_period_end": "2026-03-01",
                    "cancel_at_period_end": i == 2,
                }
                for i in (1, 2)
            ],
            "history_subscription_items": [
                {
                    "subscription_id": f"s{i}",
                    "item_id": f"si{i}",
                    "valid_from": "2026-01-01",
                    "price_id": "p1",
                    "quantity": i,
                }
                for i in (1, 2)
            ],
            "core_customers": [{"customer_id": f"c{i}"} for i in (1, 2)],
        },
    )
