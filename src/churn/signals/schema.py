"""The published schema of signal rows, shared by every signal, the marts and the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import NamedTuple

import polars as pl

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

SignalFn = Callable[[Tables, datetime, SignalSettings], pl.DataFrame]


class Signal(NamedTuple):
    name: str
    score: SignalFn
    #: False for signals shown apart from predicted risk (expansion, known churn).
    is_risk: bool


def finish(frame: pl.DataFrame, signal: str, as_of: datetime) -> pl.DataFrame:
    """A signal's SQL result (account_id, score, reason, evidence, episode_key[, signal])
    as rows of :data:`SIGNAL_SCHEMA`, severity derived from the score."""
    if "signal" not in frame.columns:
        frame = frame.with_columns(signal=pl.lit(signal))
    score = pl.col("score").cast(pl.Float64).clip(0.0, 1.0)
    return frame.with_columns(
        score=score,
        severity=pl.when(pl.col("signal") == "seat_expansion")
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
