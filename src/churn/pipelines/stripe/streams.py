"""The Stripe streams: what each lists, with which parameters, and where it lands.

Every object type the extract keeps has one ``raw_stripe_<object>`` table. Events carry
objects of any of these types; ``OBJECT_TABLES`` maps an object's ``object`` field to its
table (a legacy Plan is a Price, a legacy card or source is a payment method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stream:
    name: str  # also the suffix of raw_stripe_<name>
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    #: Asked when ``path`` answers 404 (older API versions: /v1/plans for /v1/prices).
    fallback_path: str | None = None
    #: Re-listed and diffed by a reconciliation (objects that change after creation).
    mutable: bool = True
    #: Grows with every billing cycle: a scheduled reconciliation re-lists only the ones
    #: created within ``reconcile_window_days`` (older ones rarely change, and when they
    #: do Stripe sends an event); a forced or explicit one re-lists them all.
    windowed: bool = False

    @property
    def table(self) -> str:
        return f"raw_stripe_{self.name}"


STREAMS: tuple[Stream, ...] = (
    Stream("product", "/v1/products", mutable=False),
    Stream("price", "/v1/prices", fallback_path="/v1/plans", mutable=False),
    Stream("coupon", "/v1/coupons", mutable=False),
    # Default payment methods (and a legacy default card) come embedded, so no call per
    # customer is needed; Checkout sets the card on the subscription, not the customer.
    Stream(
        "customer",
        "/v1/customers",
        {"expand": ["data.invoice_settings.default_payment_method", "data.default_source"]},
    ),
    Stream(
        "subscription",
        "/v1/subscriptions",
        {"status": "all", "expand": ["data.default_payment_method"]},
    ),
    Stream("invoice", "/v1/invoices", windowed=True),
    Stream("charge", "/v1/charges", windowed=True),
    Stream("refund", "/v1/refunds", windowed=True),
)
STREAMS_BY_NAME = {s.name: s for s in STREAMS}

#: Every raw table an object can land in (payment methods arrive embedded or by event).
RAW_OBJECTS: tuple[str, ...] = (*(s.name for s in STREAMS), "payment_method")

OBJECT_TABLES: dict[str, str] = {
    "product": "product",
    "price": "price",
    "plan": "price",
    "coupon": "coupon",
    "customer": "customer",
    "subscription": "subscription",
    "invoice": "invoice",
    "charge": "charge",
    "refund": "refund",
    "payment_method": "payment_method",
    "card": "payment_method",
    "source": "payment_method",
}

#: Nested lists that belong to other streams: dropped from a payload once their
#: payment methods are taken out, so a payload changes only when its own object does.
_FOREIGN_LISTS = ("subscriptions", "sources")


def flatten(obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Un-expand one payload: embedded objects become their ids again.

    Returns the payload as an event would carry it, and the embedded objects that land
    in tables of their own (payment methods, legacy cards), so a listed payload and an
    event payload of the same state compare equal.
    """
    out: dict[str, Any] = {}
    embedded: list[dict[str, Any]] = []
    for key, value in obj.items():
        if key in _FOREIGN_LISTS and isinstance(value, dict) and value.get("object") == "list":
            embedded.extend(_payment_methods(value.get("data") or []))
            continue
        if _is_object(value) and value["object"] in OBJECT_TABLES:
            if OBJECT_TABLES.get(value["object"]) == "payment_method":
                embedded.append(value)
            out[key] = value["id"]
        elif key == "invoice_settings" and isinstance(value, dict):
            inner = dict(value)
            pm = inner.get("default_payment_method")
            if isinstance(pm, dict) and _is_object(pm):
                embedded.append(pm)
                inner["default_payment_method"] = pm["id"]
            out[key] = inner
        else:
            out[key] = value
    return out, embedded


def _is_object(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and isinstance(value.get("object"), str)
        and value["object"] != "list"
    )


def _payment_methods(items: list[Any]) -> list[dict[str, Any]]:
    return [
        i for i in items if _is_object(i) and OBJECT_TABLES.get(i["object"]) == "payment_method"
    ]
