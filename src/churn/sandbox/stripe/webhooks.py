"""Webhook deliveries from the Stripe stand-in, as Stripe makes them.

- Registered endpoints (:class:`Endpoint`: a URL and its signing secret ``whsec_...``).
- Each delivery is signed the way Stripe documents: the header
  ``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``, with a
  fresh timestamp on every attempt.
- A non-2xx answer, a timeout or a refused connection is retried with backoff (Stripe:
  "exponential backoff for up to three days" in live mode); the schedule here is short
  (``backoff``) and the clock and the sleeper are injected, so tests never wait.
- Stripe "does not guarantee delivery of events in the order in which they're generated"
  and an endpoint "might occasionally receive the same event more than once": seeded
  ``duplicate_rate`` and ``reorder_rate`` make both happen here.
- Every attempt goes into ``log`` (:class:`Delivery`).

World actions that emit the events a payment makes (:func:`fail_payment`,
:func:`pay_invoice`) stamp them with a strictly increasing second at or after the wall
clock, so two of them are never of the same second; :func:`renew` (a burst of renewals)
stamps the current second.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from churn.sandbox.stripe.server import StripeWorld

API_VERSION = "2025-09-30.clover"


@dataclass(frozen=True)
class Endpoint:
    url: str
    secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(16))


@dataclass(frozen=True)
class Delivery:
    """One attempt: which event, where, the attempt's number, its answer (None: no
    answer), and the sender's clock when it was made."""

    event_id: str
    url: str
    attempt: int
    status: int | None
    at: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def sign(payload: str, secret: str, timestamp: int) -> str:
    """Stripe's ``Stripe-Signature`` header for ``payload``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(order=True)
class _Pending:
    due: float
    order: int
    event: dict[str, Any] = field(compare=False)
    endpoint: Endpoint = field(compare=False)
    attempt: int = field(compare=False, default=1)


class WebhookSender:
    """Queues events for every endpoint and delivers them (``deliver_pending``, or a
    background thread started by ``start``)."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint] = (),
        *,
        seed: int = 0,
        duplicate_rate: float = 0.0,
        reorder_rate: float = 0.0,
        backoff: Sequence[float] = (1, 5, 30, 120, 600, 3600),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        sign_clock: Callable[[], float] = time.time,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self.endpoints = list(endpoints)
        self.rng = random.Random(seed)
        self.duplicate_rate, self.reorder_rate = duplicate_rate, reorder_rate
        self.backoff = tuple(backoff)
        self.clock, self.sleep, self.sign_clock = clock, sleep, sign_clock
        self.timeout = timeout
        self.session = session or requests.Session()
        self.log: list[Delivery] = []
        self.given_up: list[tuple[str, str]] = []
        self._queue: list[_Pending] = []
        self._order = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def register(self, url: str, secret: str | None = None) -> Endpoint:
        endpoint = Endpoint(url, secret) if secret else Endpoint(url)
        self.endpoints.append(endpoint)
        return endpoint

    def send(self, events: Sequence[dict[str, Any]]) -> None:
        """Queue ``events`` for every endpoint: some twice, some out of order (seeded)."""
        batch = list(events)
        for i in range(len(batch) - 1):
            if self.rng.random() < self.reorder_rate:
                batch[i], batch[i + 1] = batch[i + 1], batch[i]
        extra = [e for e in batch if self.rng.random() < self.duplicate_rate]
        now = self.clock()
        with self._lock:
            for event in [*batch, *extra]:
                for endpoint in self.endpoints:
                    self._order += 1
                    self._queue.append(_Pending(now, self._order, event, endpoint))
            self._queue.sort()
            self._lock.notify_all()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _attempt(self, item: _Pending) -> Delivery:
        payload = json.dumps(item.event, separators=(",", ":"))
        header = sign(payload, item.endpoint.secret, int(self.sign_clock()))
        try:
            answer = self.session.post(
                item.endpoint.url,
                data=payload.encode(),
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": header,
                    "User-Agent": "Stripe/1.0",
                },
                timeout=self.timeout,
            )
            return Delivery(
                item.event["id"], item.endpoint.url, item.attempt, answer.status_code, self.clock()
            )
        except requests.RequestException as exc:
            return Delivery(
                item.event["id"],
                item.endpoint.url,
                item.attempt,
                None,
                self.clock(),
                type(exc).__name__,
            )

    def _next(self, block: bool) -> _Pending | None:
        with self._lock:
            while True:
                if self._stopping:
                    return None
                if self._queue:
                    wait = self._queue[0].due - self.clock()
                    if wait <= 0:
                        return self._queue.pop(0)
                elif not block:
                    return None
                else:
                    wait = 0.5
                if not block:
                    break
                self._lock.wait(timeout=min(wait, 0.5))
        # Not blocking (tests): the injected sleeper moves the injected clock.
        self.sleep(wait)
        return self._next(block)

    def _retry_or_give_up(self, item: _Pending, delivery: Delivery) -> None:
        if delivery.ok:
            return
        if item.attempt > len(self.backoff):
            self.given_up.append((item.event["id"], item.endpoint.url))
            return
        with self._lock:
            self._order += 1
            self._queue.append(
                _Pending(
                    self.clock() + self.backoff[item.attempt - 1],
                    self._order,
                    item.event,
                    item.endpoint,
                    item.attempt + 1,
                )
            )
            self._queue.sort()

    def deliver_pending(self) -> int:
        """Deliver everything queued, retries included, in this thread; returns attempts."""
        n = 0
        while (item := self._next(block=False)) is not None:
            delivery = self._attempt(item)
            self.log.append(delivery)
            n += 1
            self._retry_or_give_up(item, delivery)
        return n

    def start(self) -> None:
        """Deliver in a background thread until :meth:`stop`."""

        def loop() -> None:
            while (item := self._next(block=True)) is not None:
                delivery = self._attempt(item)
                self.log.append(delivery)
                self._retry_or_give_up(item, delivery)

        self._thread = threading.Thread(target=loop, name="stripe-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)


# -- world actions that emit events ---------------------------------------------------------

_last_second: dict[int, int] = {}


def _stamp(world: StripeWorld, *, distinct: bool = True) -> int:
    """Not before the wall clock nor any second emitted here; ``distinct``: after them."""
    last = _last_second.get(id(world), 0)
    at = max(int(time.time()), last + 1 if distinct else last, world.now)
    _last_second[id(world)] = at
    world.now = max(world.now, at)
    return at


def _event(world: StripeWorld, etype: str, obj: dict[str, Any], at: int,
           prev: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if prev is not None:
        data["previous_attributes"] = prev
    event = {
        "id": "evt_wh" + secrets.token_hex(10),
        "object": "event",
        "api_version": API_VERSION,
        "created": at,
        "data": data,
        "livemode": bool(obj.get("livemode", False)),
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": etype,
    }
    world.tables["event"].put(event)
    return event


def live_subscriptions(world: StripeWorld) -> list[str]:
    with world.lock:
        meta = world.tables["subscription"].meta
        return sorted(i for i, m in meta.items() if m.get("status") == "active")


def _new_invoice(world: StripeWorld, sub: dict[str, Any], at: int) -> dict[str, Any]:
    """A renewal invoice of ``sub`` like its latest one (new ids), open, not yet attempted."""
    last = world.get(str(sub.get("latest_invoice") or "")) or {}
    inv_id = "in_wh" + secrets.token_hex(10)
    inv: dict[str, Any] = (
        copy.deepcopy(last) if last else {"object": "invoice", "lines": {"data": []}}
    )
    for line in (inv.get("lines") or {}).get("data") or []:
        line["id"] = "il_wh" + secrets.token_hex(10)
        line["invoice"] = inv_id
    amount = int(inv.get("amount_due") or 0)
    inv.update(
        id=inv_id, created=at, customer=sub["customer"], currency=sub.get("currency"),
        status="open", attempted=False, attempt_count=0, amount_paid=0,
        amount_remaining=amount, billing_reason="subscription_cycle",
        next_payment_attempt=None, period_start=at, period_end=at,
        status_transitions={"finalized_at": at, "paid_at": None},
        parent={"quote_details": None, "type": "subscription_details",
                "subscription_details": {"metadata": {}, "subscription": sub["id"]}},
    )  # fmt: skip
    inv.pop("charge", None)
    inv.pop("payment_intent", None)
    if isinstance(inv.get("lines"), dict):
        inv["lines"]["url"] = f"/v1/invoices/{inv_id}/lines"
    sub["latest_invoice"] = inv_id
    world.tables["subscription"].put(sub)
    return inv


def _subscription(world: StripeWorld, subscription_id: str) -> dict[str, Any]:
    sub = world.tables["subscription"].get(subscription_id)
    if sub is None:
        raise KeyError(subscription_id)
    return sub


def fail_payment(
    world: StripeWorld, subscription_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A renewal invoice of the subscription whose first charge fails: the invoice (open,
    one attempt, a retry in three days) and its events (``invoice.created``,
    ``charge.failed``, ``invoice.payment_failed``)."""
    with world.lock:
        at = _stamp(world)
        inv = _new_invoice(world, _subscription(world, subscription_id), at)
        created = _event(world, "invoice.created", {**inv, "status": "draft"}, at)
        inv.update(attempted=True, attempt_count=1, next_payment_attempt=at + 3 * 86_400)
        amount = int(inv.get("amount_due") or 0)
        charge = {
            "id": "ch_wh" + secrets.token_hex(10), "object": "charge", "amount": amount,
            "amount_captured": 0, "amount_refunded": 0, "captured": False, "created": at,
            "currency": inv.get("currency"), "customer": inv["customer"], "invoice": inv["id"],
            "livemode": False, "paid": False, "refunded": False, "status": "failed",
            "failure_code": "card_declined", "failure_message": "Your card was declined.",
            "outcome": {"network_status": "declined_by_network", "reason": "generic_decline",
                        "type": "issuer_declined", "seller_message": "The bank did not return"
                        " any further details with this decline."},
        }  # fmt: skip
        world.tables["invoice"].put(inv)
        world.tables["charge"].put(charge)
        events = [
            created,
            _event(world, "charge.failed", charge, at),
            _event(world, "invoice.payment_failed", inv, at),
        ]
        return inv, events


def renew(world: StripeWorld, subscription_id: str) -> list[dict[str, Any]]:
    """A renewal paid at its first attempt (the first of the month's burst):
    ``invoice.created`` and ``invoice.paid``."""
    with world.lock:
        at = _stamp(world, distinct=False)
        inv = _new_invoice(world, _subscription(world, subscription_id), at)
        created = _event(world, "invoice.created", {**inv, "status": "draft"}, at)
        amount = int(inv.get("amount_due") or 0)
        inv.update(status="paid", attempted=True, attempt_count=1, amount_paid=amount,
                   amount_remaining=0, status_transitions={"finalized_at": at, "paid_at": at})  # fmt: skip
        world.tables["invoice"].put(inv)
        return [created, _event(world, "invoice.paid", inv, at)]


def pay_invoice(world: StripeWorld, invoice_id: str) -> list[dict[str, Any]]:
    """The invoice's retry succeeds: ``charge.succeeded`` and ``invoice.paid``."""
    with world.lock:
        inv = world.tables["invoice"].get(invoice_id)
        if inv is None:
            raise KeyError(invoice_id)
        at = _stamp(world)
        amount = int(inv.get("amount_due") or 0)
        inv.update(
            status="paid",
            amount_paid=amount,
            amount_remaining=0,
            attempt_count=int(inv.get("attempt_count") or 0) + 1,
            next_payment_attempt=None,
        )
        inv["status_transitions"] = {**(inv.get("status_transitions") or {}), "paid_at": at}
        charge = {
            "id": "ch_wh" + secrets.token_hex(10), "object": "charge", "amount": amount,
            "amount_captured": amount, "amount_refunded": 0, "captured": True, "created": at,
            "currency": inv.get("currency"), "customer": inv.get("customer"),
            "invoice": invoice_id, "livemode": False, "paid": True, "refunded": False,
            "status": "succeeded", "failure_code": None, "failure_message": None,
            "outcome": {"network_status": "approved_by_network", "type": "authorized"},
        }  # fmt: skip
        world.tables["invoice"].put(inv)
        world.tables["charge"].put(charge)
        return [
            _event(world, "charge.succeeded", charge, at),
            _event(world, "invoice.paid", inv, at),
        ]
