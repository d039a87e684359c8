"""Fixtures for the Stripe extract: localstripe on loopback, a small world, settings."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import stripe

from churn.settings import Settings, StripeSettings

RUNNER = Path(__file__).with_name("localstripe_runner.py")
TEST_KEY = "sk_test_churn_tests"
#: Seconds a call to localstripe may take before the test fails: a guard against a hang.
HANG = 600.0


class CountingClient(stripe.RequestsClient):
    """The SDK's own HTTP client, counting requests by path (the client seam)."""

    def __init__(self) -> None:
        super().__init__(timeout=HANG)
        self.paths: list[str] = []

    def request(self, method: str, url: str, headers: Any, post_data: Any = None) -> Any:
        self.paths.append(url.split("://", 1)[1].split("/", 1)[1].split("?", 1)[0])
        return super().request(method, url, headers, post_data)


@dataclass
class LocalStripe:
    base: str
    process: subprocess.Popen[str]

    def client(self) -> stripe.StripeClient:
        return stripe.StripeClient(
            TEST_KEY, base_addresses={"api": self.base}, max_network_retries=0
        )

    def reset(self) -> None:
        import requests

        requests.delete(f"{self.base}/_config/data", timeout=HANG).raise_for_status()
        self.shift_clock(0)

    def shift_clock(self, seconds: float) -> int:
        """localstripe's clock from now on: the wall clock plus ``seconds`` (Stripe stamps
        to the second; moving this clock replaces sleeping until the second turns).
        Returns localstripe's time now, in whole seconds."""
        import requests

        answer = requests.post(
            f"{self.base}/_config/churn_clock", json={"offset": seconds}, timeout=HANG
        )
        answer.raise_for_status()
        return int(answer.json()["now"])


def start_localstripe() -> LocalStripe:
    process = subprocess.Popen(
        [sys.executable, str(RUNNER)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"localstripe did not start: {line!r}")
    return LocalStripe(f"http://127.0.0.1:{int(line.split()[1])}", process)


@pytest.fixture(scope="module")
def localstripe() -> Iterator[LocalStripe]:
    """One localstripe per test module (each module builds and mutates its own world)."""
    server = start_localstripe()
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            server.process.kill()


def stripe_settings(db: Path, base: str, **stripe_fields: Any) -> Settings:
    fields: dict[str, Any] = {
        "api_key": TEST_KEY,
        "api_base": base,
        "max_retries": 0,
        "reconcile_every_hours": 0,
        **stripe_fields,
    }
    return Settings(db=db, stripe=StripeSettings(**fields))


@dataclass
class World:
    """Ids of what was built, by role."""

    plans: dict[str, str] = field(default_factory=dict)
    customers: list[str] = field(default_factory=list)
    subscriptions: dict[str, str] = field(default_factory=dict)  # role -> sub id
    items: dict[str, str] = field(default_factory=dict)  # role -> item id
    deleted_customer: str = ""
    declining_customer: str = ""


def add_card(c: stripe.StripeClient, customer: str, number: str) -> str:
    pm = c.v1.payment_methods.create(
        {
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        }
    )
    c.v1.payment_methods.attach(pm.id, {"customer": customer})
    c.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": pm.id}})
    return pm.id


def build_world(c: stripe.StripeClient, n_customers: int = 16) -> World:
    """At least 15 customers; monthly and yearly plans; several quantities; a declining
    card with a failed invoice; a canceled subscription; a deleted customer."""
    w = World()
    pro = c.v1.products.create({"name": "Pro"})
    basic = c.v1.products.create({"name": "Basic"})
    for pid, product, amount, interval in (
        ("pro-monthly", pro.id, 5000, "month"),
        ("pro-yearly", pro.id, 50000, "year"),
        ("basic-monthly", basic.id, 1500, "month"),
    ):
        c.v1.plans.create(
            {
                "id": pid,
                "product": product,
                "amount": amount,
                "currency": "usd",
                "interval": interval,
            }
        )
        w.plans[pid] = pid
    plans = ["pro-monthly", "pro-yearly", "basic-monthly"]
    for i in range(n_customers):
        cus = c.v1.customers.create({"email": f"owner{i}@acme{i}.example", "name": f"Acme {i}"})
        w.customers.append(cus.id)
        add_card(c, cus.id, "4242424242424242")
        sub = c.v1.subscriptions.create(
            {"customer": cus.id, "items": [{"plan": plans[i % 3], "quantity": 1 + i % 5}]}
        )
        role = f"sub{i}"
        w.subscriptions[role] = sub.id
        w.items[role] = sub["items"]["data"][0]["id"]
    # A declining card: the first invoice fails, the subscription stays incomplete.
    bad = c.v1.customers.create({"email": "ap@declined.example", "name": "Declined Ltd"})
    add_card(c, bad.id, "4000000000000341")
    with contextlib.suppress(stripe.CardError):
        c.v1.subscriptions.create({"customer": bad.id, "items": [{"plan": "pro-monthly"}]})
    w.declining_customer = bad.id
    w.customers.append(bad.id)
    # A canceled subscription and a deleted customer, before any extract.
    c.v1.subscriptions.cancel(w.subscriptions["sub0"])
    w.deleted_customer = w.customers[1]
    c.v1.customers.delete(w.deleted_customer)
    return w


def list_ids(c: stripe.StripeClient, path: str, **params: Any) -> set[str]:
    """Every id a list endpoint returns, through the SDK's own paging."""
    ids: set[str] = set()
    after = None
    while True:
        query = {"limit": 100, **params, **({"starting_after": after} if after else {})}
        page = c.raw_request("get", path, **query).data
        ids.update(o["id"] for o in page["data"])
        if not page["has_more"]:
            return ids
        after = page["data"][-1]["id"]
