"""The Stripe extract: list and event reads through the ``stripe`` SDK into the warehouse.

``streams`` declares every stream (object, id prefix, cursor, tables, core columns);
``client`` builds the SDK client on one HTTP seam; ``extract`` runs the backfill and the
incremental event read; ``land`` writes raw versions; ``normalise`` fills the ``core``
tables and quarantines bad rows; ``history`` builds the point-in-time ``hist`` tables.
"""

from __future__ import annotations

from churn.pipelines.stripe.client import StripeApi, make_stripe_client
from churn.pipelines.stripe.extract import StripeExtractResult, apply_events, extract_stripe
from churn.pipelines.stripe.history import build_history
from churn.pipelines.stripe.streams import OBJECT_TABLES, STREAMS, Stream

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
