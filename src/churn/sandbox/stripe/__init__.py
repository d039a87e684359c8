"""A loopback stand-in for Stripe's API, serving a generated world to the real SDK."""

from __future__ import annotations

from churn.sandbox.stripe.server import (
    RunningStripe,
    StripeWorld,
    start_stripe_server,
    stripe_server,
)

__all__ = ["RunningStripe", "StripeWorld", "start_stripe_server", "stripe_server"]
