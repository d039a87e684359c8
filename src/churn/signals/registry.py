"""The signal registry: :data:`SIGNALS`, one :class:`Signal` per signal, and what derives from it."""

from __future__ import annotations

from churn.signals import (
    cancel_at_period_end,
    card_expiry,
    downgrade,
    payment_failure,
    seat_utilization,
)
from churn.signals.schema import Kind, Signal
from churn.signals.wording import worded

#: Every signal, in the order they are scored.
SIGNALS: tuple[Signal, ...] = (
    Signal(
        payment_failure.NAME,
        worded(payment_failure.NAME, payment_failure.score),
        kind="risk",
        weight=0.9,
        makes_tasks=True,
        resolution="the invoice was paid, voided or written off",
        ladder="dunning",
    ),
    Signal(
        downgrade.NAME,
        worded(downgrade.NAME, downgrade.score),
        kind="risk",
        weight=0.6,
        makes_tasks=True,
        resolution="the downgrade is out of the scoring window",
    ),
    Signal(
        cancel_at_period_end.NAME,
        worded(cancel_at_period_end.NAME, cancel_at_period_end.score),
        kind="known_churn",
        weight=None,
        makes_tasks=True,
        resolution="the scheduled cancellation was withdrawn",
    ),
    Signal(
        card_expiry.NAME,
        worded(card_expiry.NAME, card_expiry.score),
        kind="risk",
        weight=0.5,
        makes_tasks=True,
        resolution="a usable payment method is now on file",
    ),
    Signal(
        seat_utilization.NAME,
        seat_utilization.score,
        kind="risk",
        weight=0.5,
        makes_tasks=True,
        resolution="seat utilization recovered",
    ),
    # An upsell lead, not a churn risk: left out of Tasks by default; add it to
    # ``CHURN_PUSH__TASK_SIGNALS`` to route it to owners too.
    Signal(
        seat_utilization.EXPANSION,
        seat_utilization.score_expansion,
        kind="expansion",
        weight=None,
        makes_tasks=False,
        resolution="seat use fell below the expansion threshold",
    ),
)

SIGNALS_BY_NAME: dict[str, Signal] = {s.name: s for s in SIGNALS}
#: The sentence a Task is closed with when its signal is no longer known (renamed or
#: removed since the Task was made).
UNKNOWN_RESOLUTION = "the signal no longer holds"


def default_risk_weights() -> dict[str, float]:
    """The risk score's weights when settings name none: every risk signal's own."""
    return {s.name: s.weight for s in SIGNALS if s.weight is not None}


def default_task_signals() -> tuple[str, ...]:
    """The signals whose episodes become Tasks when settings name none."""
    return tuple(s.name for s in SIGNALS if s.makes_tasks)


def names_of(kind: Kind) -> tuple[str, ...]:
    """The signals of one kind, in registry order."""
    return tuple(s.name for s in SIGNALS if s.kind == kind)


__all__ = [
    "SIGNALS",
    "SIGNALS_BY_NAME",
    "UNKNOWN_RESOLUTION",
    "default_risk_weights",
    "default_task_signals",
    "names_of",
]
