"""The webhook tests' world: a small world served on loopback, backfilled once per session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from churn import warehouse
from churn.sandbox.demo import Sandbox
from churn.sandbox.stripe.webhooks import Endpoint, WebhookSender, live_subscriptions
from churn.settings import Settings

SECRET = "whsec_test_loopback_secret"


@dataclass
class Hooked:
    box: Sandbox
    settings: Settings
    sender: WebhookSender
    endpoint_secret: str


def register(sender: WebhookSender, url: str, secret: str = SECRET) -> Endpoint:
    return sender.register(url, secret)


def linked_subscriptions(h: Hooked) -> list[tuple[str, str]]:
    """Live subscriptions whose customer is linked to an Account with no Task yet, with
    that Account; one per Account."""
    con = warehouse.connect(h.settings.db, read_only=True)
    try:
        links = dict(con.execute(
            "SELECT customer_id, account_id FROM core_account_links WHERE account_id IS NOT NULL"
        ).fetchall())  # fmt: skip
        tasked = {r[0] for r in con.execute(
            "SELECT DISTINCT fields->>'WhatId' FROM push_state WHERE sobject = 'Task'"
        ).fetchall()}  # fmt: skip
    finally:
        con.close()
    world = h.box.stripe.world
    out: dict[str, str] = {}
    for sub_id in live_subscriptions(world):
        account = links.get((world.get(sub_id) or {}).get("customer"))
        if account and account not in tasked and account not in out.values():
            out[sub_id] = account
    return list(out.items())


def tasks(h: Hooked, account: str | None = None) -> list[dict[str, Any]]:
    field = h.settings.salesforce.task_external_id_field
    with h.box.salesforce.org.lock:
        rows = [dict(t) for t in h.box.salesforce.records.get("Task", {}).values()]
    return [t for t in rows if t.get(field) and (account is None or t.get("WhatId") == account)]


def raw_event_counts(h: Hooked, ids: list[str]) -> dict[str, int]:
    con = warehouse.connect(h.settings.db, read_only=True)
    try:
        rows = con.execute(
            "SELECT id, count(*) FROM raw_stripe_event WHERE id IN (SELECT unnest(?::VARCHAR[]))"
            " GROUP BY id",
            [ids],
        ).fetchall()
    finally:
        con.close()
    return {r[0]: r[1] for r in rows}
