"""The Stripe extract: list and event reads through the ``stripe`` SDK into the warehouse.

``streams`` declares every stream (object, id prefix, cursor, tables, core columns);
``client`` builds the SDK client on one HTTP seam; ``extract`` runs the backfill and the
incremental event read; ``land`` writes raw versions; ``normalise`` fills the ``core``
tables and quarantines bad rows; ``history`` builds the point-in-time ``hist`` tables.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from churn.pipelines.stripe.client import StripeApi, make_stripe_client
    from churn.pipelines.stripe.extract import StripeExtractResult, apply_events, extract_stripe
    from churn.pipelines.stripe.history import build_history
    from churn.pipelines.stripe.streams import OBJECT_TABLES, STREAMS, Stream

#: Public name -> the module defining it. Imported on first use, so the sandbox's world
#: and stand-in, which read only ``streams``, load neither the SDK nor DuckDB.
_HOME = {
    "OBJECT_TABLES": "streams",
    "STREAMS": "streams",
    "Stream": "streams",
    "StripeApi": "client",
    "make_stripe_client": "client",
    "StripeExtractResult": "extract",
    "apply_events": "extract",
    "extract_stripe": "extract",
    "build_history": "history",
}

__all__ = [
    "OBJECT_TABLES",
    "STREAMS",
    "Stream",
    "StripeApi",
    "StripeExtractResult",
    "apply_events",
    "build_history",
    "extract_stripe",
    "make_stripe_client",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
