"""Pure scoring: history tables and an explicit ``as_of`` in, rows of one schema out.

No network, no wall-clock reads, no writes (import boundaries checked by ``lint-imports``).
"""

from __future__ import annotations

from churn.signals import (
    cancel_at_period_end,
    card_expiry,
    downgrade,
    payment_failure,
    seat_utilization,
)
from churn.signals.schema import SIGNAL_SCHEMA, Signal

#: Every signal, in the order they are scored. ``is_risk`` False: shown apart from risk.
SIGNALS: tuple[Signal, ...] = (
    Signal(payment_failure.NAME, payment_failure.score, True),
    Signal(downgrade.NAME, downgrade.score, True),
    Signal(cancel_at_period_end.NAME, cancel_at_period_end.score, False),
    Signal(card_expiry.NAME, card_expiry.score, True),
    Signal(seat_utilization.NAME, seat_utilization.score, True),
)

__all__ = ["SIGNALS", "SIGNAL_SCHEMA", "Signal"]
