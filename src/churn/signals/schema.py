"""The published schema of signal rows, shared by every signal, the marts and the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import polars as pl

if TYPE_CHECKING:  # settings read the registry for their defaults; signals only its type
    from churn.settings import SignalSettings
    from churn.signals.tables import Tables

#: Every signal returns exactly these columns, in this order.
SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    "account_id": pl.String(),
    "signal": pl.String(),
    "score": pl.Float64(),
    "severity": pl.String(),
    "reason": pl.String(),
    "evidence": pl.String(),
    "as_of": pl.Datetime("us"),
    "episode_key": pl.String(),
}

SignalFn = Callable[["Tables", datetime, "SignalSettings"], pl.DataFrame]

#: What a signal says about an account: churn ``risk`` (weighted into the risk score),
#: ``known_churn`` (a churn already scheduled: shown apart, never a prediction) or
#: ``expansion`` (an upsell lead: severity ``info``, never among the churn reasons).
Kind = Literal["risk", "known_churn", "expansion"]

#: Escalation ladders, named exactly (the push climbs the one a signal names):
#: ``dunning`` follows Stripe's retries (a Task at once, escalation, CSM outreach, an
#: executive sponsor before the final retry); ``flat`` is one Task due in
#: ``task_due_days``.
Ladder = Literal["dunning", "flat"]
LADDERS: tuple[Ladder, ...] = ("dunning", "flat")


@dataclass(frozen=True)
class Signal:
    """One signal and every rule about it; :data:`churn.signals.SIGNALS` holds them all.

    Settings take their defaults from here (``risk_weights``, ``task_signals``), the push
    its ladder and the sentence it closes a Task with; nothing else names a signal.
    """

    name: str
    score: SignalFn
    kind: Kind
    #: Default weight in the risk score (0..1]; None for a signal that is not risk.
    weight: float | None
    #: Whether its episodes become Tasks for the Account's owner by default.
    makes_tasks: bool
    #: Why its Task is closed when the episode resolves, completing "Closed ...: <it>."
    resolution: str
    ladder: Ladder = "flat"

    @property
    def is_risk(self) -> bool:
        return self.kind == "risk"


def finish(
    frame: pl.DataFrame, signal: str, as_of: datetime, *, info: bool = False
) -> pl.DataFrame:
    """A signal's SQL result (account_id, score, reason, evidence, episode_key) as rows of
    :data:`SIGNAL_SCHEMA`, severity derived from the score (``info``: always "info")."""
    frame = frame.with_columns(signal=pl.lit(signal))
    score = pl.col("score").cast(pl.Float64).clip(0.0, 1.0)
    return frame.with_columns(
        score=score,
        severity=pl.when(pl.lit(info))
        .then(pl.lit("info"))
        .when(score >= 0.7)
        .then(pl.lit("high"))
        .when(score >= 0.4)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("low")),
        as_of=pl.lit(as_of).cast(pl.Datetime("us")),
    ).select(pl.col(name).cast(dtype) for name, dtype in SIGNAL_SCHEMA.items())


def empty() -> pl.DataFrame:
    return pl.DataFrame(schema=SIGNAL_SCHEMA)
