"""Reasons per account: the features that raise its probability most, in words.

Attribution is model-agnostic: for each feature, the account's probability minus its
probability with that one feature set to the model's *reference* (the value typical of
accounts that stayed, from training). The largest positive differences are the reasons,
each worded from the account's own values ("seat use fell from 80% to 35% in 60 days"),
never a column name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import numpy.typing as npt
import polars as pl

from churn.signals.model.features import DESCRIPTIONS, FEATURE_NAMES

#: A contribution below this (probability points / 100) is not worth a sentence.
MIN_CONTRIBUTION = 0.005


def _n(v: float) -> int:
    return round(v)


def _pct(v: float) -> str:
    return f"{round(100 * v)}%"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _util(days: int) -> Callable[[Mapping[str, float]], str]:
    def word(r: Mapping[str, float]) -> str:
        now = r["utilization_30d"]
        change = r[f"utilization_change_{days}d"]
        if math.isnan(change):
            return f"Seat use is {_pct(now)} over the last 30 days"
        before = now - change
        verb = "fell" if change < 0 else "rose"
        return f"Seat use {verb} from {_pct(before)} to {_pct(now)} in {days} days"

    return word


def _mrr_change(days: int) -> Callable[[Mapping[str, float]], str]:
    def word(r: Mapping[str, float]) -> str:
        v = r[f"mrr_change_{days}d"]
        if v < 0:
            return f"MRR fell {_pct(-v)} in the last {days} days"
        if v > 0:
            return f"MRR rose {_pct(v)} in the last {days} days"
        return f"MRR has not changed in {days} days"

    return word


WORDS: dict[str, Callable[[Mapping[str, float]], str]] = {
    "tenure_days": lambda r: f"Customer for {_n(r['tenure_days'])} days",
    "subscription_count": lambda r: (
        f"{_plural(_n(r['subscription_count']), 'subscription')} in force"
    ),
    "is_annual": lambda r: "Billed yearly" if r["is_annual"] else "Billed monthly",
    "is_trialing": lambda r: "Still in a trial" if r["is_trialing"] else "Not in a trial",
    "is_unpaid": lambda r: (
        "Collection has stopped on an unpaid subscription"
        if r["is_unpaid"]
        else "No unpaid subscription"
    ),
    "days_to_renewal": lambda r: (
        "No renewal date known"
        if math.isnan(r["days_to_renewal"])
        else f"Renews in {_n(r['days_to_renewal'])} days"
    ),
    "has_discount": lambda r: "On a discount" if r["has_discount"] else "Pays full price",
    "log_mrr": lambda r: f"MRR of {math.expm1(r['log_mrr']):,.0f} (reporting currency)",
    "mrr_change_30d": _mrr_change(30),
    "mrr_change_90d": _mrr_change(90),
    "mrr_change_180d": _mrr_change(180),
    "downgrade_180d": lambda r: (
        f"MRR is {_pct(r['downgrade_180d'])} below its level of the last 6 months"
    ),
    "seats": lambda r: f"{_plural(_n(r['seats']), 'seat')} held",
    "seat_change_90d": lambda r: (
        f"Seats cut by {_pct(-r['seat_change_90d'])} in 90 days"
        if r["seat_change_90d"] < 0
        else f"Seats up {_pct(r['seat_change_90d'])} in 90 days"
    ),
    "utilization_30d": lambda r: (
        "No usage reported in the last 30 days"
        if math.isnan(r["utilization_30d"])
        else f"Seat use is {_pct(r['utilization_30d'])} over the last 30 days"
    ),
    "utilization_change_30d": _util(30),
    "utilization_change_60d": _util(60),
    "utilization_change_90d": _util(90),
    "utilization_14d": lambda r: (
        "No usage reported in the last 14 days"
        if math.isnan(r["utilization_14d"])
        else f"Seat use is {_pct(r['utilization_14d'])} over the last 14 days"
    ),
    "utilization_90d": lambda r: f"Seat use averaged {_pct(r['utilization_90d'])} over 90 days",
    "utilization_180d": lambda r: f"Seat use averaged {_pct(r['utilization_180d'])} over 6 months",
    "utilization_min_180d": lambda r: (
        f"Seat use fell as low as {_pct(r['utilization_min_180d'])} in a month of the last 6"
    ),
    "utilization_fall_180d": lambda r: (
        f"Seat use is {_pct(r['utilization_fall_180d'])} of seats below its best month of"
        " the last 6"
    ),
    "utilization_change_180d": _util(180),
    "utilization_slope_90d": lambda r: (
        f"Seat use is falling by {_pct(-r['utilization_slope_90d'])} of seats a month"
        if r["utilization_slope_90d"] < 0
        else f"Seat use is rising by {_pct(r['utilization_slope_90d'])} of seats a month"
    ),
    "usage_missing": lambda r: (
        "No usage reported in the last 30 days" if r["usage_missing"] else "Usage reported recently"
    ),
    "failed_since_payment": lambda r: (
        f"{_plural(_n(r['failed_since_payment']), 'failed payment')} since the last successful one"
    ),
    "days_in_failure": lambda r: (
        "No payment failing now"
        if math.isnan(r["days_in_failure"])
        else f"Payments have been failing for {_n(r['days_in_failure'])} days"
    ),
    "decline_hard": lambda r: (
        "The last decline was hard (the card cannot be retried)"
        if r["decline_hard"]
        else "No hard decline"
    ),
    "decline_customer_action": lambda r: (
        "The last decline needs the customer to fix their card"
        if r["decline_customer_action"]
        else "No decline waiting on the customer"
    ),
    "open_invoices": lambda r: f"{_plural(_n(r['open_invoices']), 'invoice')} unpaid",
    "days_invoice_open": lambda r: (
        "No unpaid invoice"
        if math.isnan(r["days_invoice_open"])
        else f"An invoice has been unpaid for {_n(r['days_invoice_open'])} days"
    ),
    "uncollectible_365d": lambda r: (
        f"{_plural(_n(r['uncollectible_365d']), 'invoice')} written off in the last 12 months"
    ),
    "failures_30d": lambda r: (
        f"{_plural(_n(r['failures_30d']), 'failed payment')} in the last 30 days"
    ),
    "failures_90d": lambda r: (
        f"{_plural(_n(r['failures_90d']), 'failed payment')} in the last 90 days"
    ),
    "failures_180d": lambda r: (
        f"{_plural(_n(r['failures_180d']), 'failed payment')} in the last 6 months"
    ),
    "failures_365d": lambda r: (
        f"{_plural(_n(r['failures_365d']), 'failed payment')} in the last 12 months"
    ),
    "recoveries_180d": lambda r: (
        f"{_plural(_n(r['recoveries_180d']), 'invoice')} paid only"
        " after a retry in the last 6 months"
    ),
    "recoveries_365d": lambda r: (
        f"{_plural(_n(r['recoveries_365d']), 'invoice')} paid only"
        " after a retry in the last 12 months"
    ),
    "days_since_failure": lambda r: (
        "No failed payment on record"
        if math.isnan(r["days_since_failure"])
        else f"Last failed payment {_n(r['days_since_failure'])} days ago"
    ),
    "days_since_payment": lambda r: (
        "No successful payment yet"
        if math.isnan(r["days_since_payment"])
        else f"Last successful payment {_n(r['days_since_payment'])} days ago"
    ),
    "card_days_after_renewal": lambda r: (
        "No card expiry known"
        if math.isnan(r["card_days_after_renewal"])
        else (
            f"The card expires {_n(-r['card_days_after_renewal'])} days before the renewal"
            if r["card_days_after_renewal"] <= 0
            else f"The card stays good {_n(r['card_days_after_renewal'])} days past the renewal"
        )
    ),
    "no_payment_method": lambda r: (
        "No payment method for the renewal"
        if r["no_payment_method"]
        else "A payment method is on file"
    ),
    "owner_inactive": lambda r: (
        "The account owner in Salesforce is inactive"
        if r["owner_inactive"]
        else "The account owner is active"
    ),
    "open_opportunities": lambda r: f"{_plural(_n(r['open_opportunities']), 'open Opportunity')}",
    "lost_opportunities_365d": lambda r: (
        f"{_plural(_n(r['lost_opportunities_365d']), 'lost Opportunity')} in the last 12 months"
    ),
    "contacts": lambda r: f"{_plural(_n(r['contacts']), 'contact')} in Salesforce",
}


def sentence(feature: str, row: Mapping[str, float]) -> str:
    """One feature of one account, in words (a fallback names what it measures)."""
    try:
        text = WORDS[feature](row)
    except (KeyError, TypeError, ValueError, OverflowError):
        text = f"{DESCRIPTIONS[feature].capitalize()}: {row.get(feature)}"
    return text.replace("Opportunitys", "Opportunities") + "."


#: Rows per call of the model when attributing: the moved copies of many features go to
#: the model together, in blocks of this many rows. Gradient boosting predicts tree by
#: tree over the whole block, so a block that stays in cache (8,192 x 47 float32, 1.5 MB)
#: is fastest: 10,000 accounts, 125,000 moved rows: 1.75 s CPU at 8,192 and 2,000 rows a
#: block, 2.5 s at 32,000, 3.6 s at 200,000 (one call per feature: 1.9 s).
CONTRIBUTION_BLOCK_ROWS = 8_192


def moves(
    x: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
    may_change: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.bool_]:
    """Per row and feature: the moved copy :func:`contributions` predicts (the value
    differs from the reference, a missing one from a present one; with ``may_change``,
    only where a split can see it)."""
    ref = np.asarray(reference, dtype=np.float32)
    moved = ~((x == ref) | (np.isnan(x) & np.isnan(ref)))
    return moved if may_change is None else moved & may_change


def contributions(
    predict: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]],
    x: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
    block_rows: int = CONTRIBUTION_BLOCK_ROWS,
    may_change: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Probabilities and, per feature, probability minus that with the feature at its
    reference value (only where the account's value differs from it).

    With ``may_change`` (:func:`churn.signals.model.routing.may_change`, gradient
    boosting: each row's probability is computed alone, in float64, the same whatever rows
    come with it): the moves it marks False cannot change the prediction, so their
    difference is 0 without predicting them, and the other moved rows of every feature are
    stacked and predicted together, in blocks of ``block_rows``: the same numbers as one
    call per feature, without a call's fixed cost 48 times. Without it, one call per
    feature.
    """
    base = predict(x)
    out = np.zeros(x.shape, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float32)
    differs = moves(x, ref)
    if may_change is None:
        # Not a model whose rows are independent to the last bit (the linear candidate
        # computes in float32, and its sums' last bits depend on the rows predicted with
        # them): one call per feature, as always.
        for j in range(x.shape[1]):
            rows_j = np.flatnonzero(differs[:, j])
            if len(rows_j):
                moved_j = x[rows_j]  # fancy indexing copies
                moved_j[:, j] = ref[j]
                out[rows_j, j] = base[rows_j] - predict(moved_j)
        return base, out
    differs &= may_change
    # (row, feature) of every moved copy, feature-major as the loop over features was
    cols, rows = np.nonzero(differs.T)
    for start in range(0, len(rows), max(1, block_rows)):
        r = rows[start : start + block_rows]
        c = cols[start : start + block_rows]
        moved = x[r]  # fancy indexing copies
        moved[np.arange(len(r)), c] = ref[c]
        out[r, c] = base[r] - predict(moved)
    return base, out


class _Row(Mapping[str, float]):
    """One account's feature values by name (NaN where missing), read from the matrix
    only for the features a sentence names."""

    __slots__ = ("_values",)

    def __init__(self, values: npt.NDArray[np.float64]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> float:
        return float(self._values[_INDEX[name]])

    def __iter__(self) -> Iterator[str]:
        return iter(FEATURE_NAMES)

    def __len__(self) -> int:
        return len(FEATURE_NAMES)


_INDEX = {name: j for j, name in enumerate(FEATURE_NAMES)}


def reasons_frame(
    frame: pl.DataFrame, contrib: npt.NDArray[np.float64], top: int = 3
) -> list[list[str]]:
    """Per row of ``frame`` (its feature columns), up to ``top`` sentences, largest first."""
    values = frame.select(FEATURE_NAMES).to_numpy().astype(np.float64)  # nulls are NaN
    order = np.argsort(-contrib, axis=1, kind="stable")[:, : top * 2]
    out: list[list[str]] = []
    for i in range(contrib.shape[0]):
        row = _Row(values[i])
        said: list[str] = []
        for j in order[i]:
            if contrib[i, j] < MIN_CONTRIBUTION or len(said) >= top:
                break
            text = sentence(FEATURE_NAMES[j], row)
            if text not in said:
                said.append(text)
        out.append(said)
    return out
