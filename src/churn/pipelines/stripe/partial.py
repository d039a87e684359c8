"""Partial objects: an event's ``data.object`` that lacks what the normaliser needs.

Stripe documents ``data.object`` as "the object as it was when the event occurred" (the
Event object), so a full payload is the rule; a proxy, an older integration or a thin
event can still deliver ``{id, object}`` alone or drop fields. Landed as the newest
version, such a payload would replace the stored full one and the object would leave
``core_*``. The extract completes it by retrieving the object, and keeps it out (a
quarantine row, source ``stripe_event``) when the retrieve cannot.
"""

from __future__ import annotations

from typing import Any

#: Per stream, the top-level fields a payload must have (present, even if null) to be
#: normalised: what the normaliser's rules and core columns cannot do without.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "subscription": ("customer", "status", "items"),
    "price": ("currency",),
    "invoice": ("currency", "status"),
    "charge": ("currency", "amount"),
    "refund": ("amount",),
    "payment_intent": ("amount", "currency", "status"),
}
#: Fields that say nothing about an object: a payload of only these is partial whatever
#: its stream.
_BARE = frozenset({"id", "object", "livemode", "deleted"})

#: The quarantine source of events whose object could not be completed.
QUARANTINE_SOURCE = "stripe_event"


def missing_fields(stream: str, obj: dict[str, Any]) -> list[str]:
    """The required fields ``obj`` lacks (``["..."]`` for a bare ``{id, object}``); none
    for a deleted object (its event says only that it is gone)."""
    if obj.get("deleted") is True:
        return []
    missing = [f for f in REQUIRED_FIELDS.get(stream, ()) if f not in obj]
    if not missing and set(obj) <= _BARE:
        return ["every field but its id"]
    return missing


def is_partial(stream: str, obj: dict[str, Any]) -> bool:
    return bool(missing_fields(stream, obj))
