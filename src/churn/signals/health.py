"""Payment Health, the churn risk score and the ``account_health`` rows.

Payment Health, first rule that matches:

1. ``Failed``: a ``payment_failure`` signal (an invoice open after a failed attempt);
2. ``No Payment Method``: a ``card_expiry`` signal of kind ``no_payment_method``;
3. ``At Risk``: a ``card_expiry`` signal (the card expires before the renewal);
4. ``Healthy``: none of these.

Risk score (0..100): ``100 x (1 - prod(1 - weight_s x score_s))`` over the account's risk
signals, weights from settings. Known churn (a scheduled cancellation) and expansion are
not in it: the score predicts churn nobody has announced, and known churn is shown apart
(``known_churn``, the whole MRR at risk, the cancellation early in ``top_reasons`` and its
own Task). Mixing them would let the announced cases, trivially predicted, hide how well
the rest is predicted. A trained model may replace
:func:`risk_score`; it is the only place the number is made.

MRR at risk: the whole MRR when payment health is Failed or churn is known, else MRR x
risk score / 100 (rounded half up, integers only).

With a churn-risk model in force, its scores (:data:`MODEL_SCORE_SCHEMA`: a calibrated
probability of churn within its horizon, the reasons that raise it, its version) replace
the rule-based number: ``risk_score`` is the probability in percent, and
``expected_mrr_at_risk_minor`` is probability x MRR (the whole MRR for known churn or
Failed, as above). Without a model, ``churn_probability`` and ``model_version`` are NULL
and the expected MRR at risk is the rule-based one, so every worklist orders by one column
either way. Signal reasons come first in ``top_reasons`` (a failed invoice says what to
do), the model's after them; among signals, the order of :data:`REASON_RANK` (the top
reason agrees with Payment Health: a ``Failed`` account's is its failed payment, even when
a card expiry scores higher), then score. The first is ``Churn_Top_Reason__c``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals import cancel_at_period_end, card_expiry, payment_failure
from churn.signals.facts import IN_FORCE_STATUSES, last_successful_payment_sql, sql_in
from churn.signals.mrr import account_key
from churn.signals.registry import names_of
from churn.signals.tables import Tables

HEALTH_SCHEMA: dict[str, pl.DataType] = {
    "account_id": pl.String(),
    "as_of": pl.Datetime("us"),
    "payment_health": pl.String(),
    "risk_score": pl.Int32(),
    "known_churn": pl.Boolean(),
    "churn_effective_at": pl.Datetime("us"),
    "reporting_currency": pl.String(),
    "total_mrr_minor": pl.Int64(),
    "mrr_at_risk_minor": pl.Int64(),
    "next_renewal_at": pl.Datetime("us"),
    "last_successful_payment_at": pl.Datetime("us"),
    "days_since_last_payment": pl.Int32(),
    "subscription_count": pl.Int32(),
    "top_reasons": pl.List(pl.String()),
    "stripe_customer_ids": pl.List(pl.String()),
    "churn_probability": pl.Float64(),
    "expected_mrr_at_risk_minor": pl.Int64(),
    "model_version": pl.String(),
}

#: What a churn-risk model gives :func:`account_health`: one row per account it scored.
MODEL_SCORE_SCHEMA: dict[str, pl.DataType] = {
    "account_id": pl.String(),
    "churn_probability": pl.Float64(),
    "reasons": pl.List(pl.String()),
    "model_version": pl.String(),
}
#: How many reasons an account's row keeps.
TOP_REASONS = 3
#: The order of an account's reasons before their scores: the signal that makes Payment
#: Health ``Failed``, then a scheduled cancellation, then the card expiry that makes it
#: ``At Risk`` or ``No Payment Method``; any other signal after these, by score.
REASON_RANK: dict[str, int] = {
    payment_failure.NAME: 0,
    cancel_at_period_end.NAME: 1,
    card_expiry.NAME: 2,
}


def risk_score(signals: pl.DataFrame, settings: SignalSettings) -> pl.DataFrame:
    """account_id, risk_score (0..100) from signal rows; the one place the score is made."""
    weights = pl.DataFrame(
        {"signal": list(settings.risk_weights), "weight": list(settings.risk_weights.values())},
        schema={"signal": pl.String, "weight": pl.Float64},
    )
    risk = signals.filter(pl.col("signal").is_in(names_of("risk"))).join(weights, on="signal")
    return risk.group_by("account_id").agg(
        risk_score=(100 * (1 - (1 - (pl.col("weight") * pl.col("score")).clip(0, 1)).product()))
        .round(0)
        .cast(pl.Int32)
    )


def payment_health(signals: pl.DataFrame) -> pl.DataFrame:
    """account_id, payment_health by the written rules above (accounts with a signal)."""
    kind = pl.col("evidence").str.json_path_match("$.kind")
    return signals.group_by("account_id").agg(
        payment_health=pl.when((pl.col("signal") == payment_failure.NAME).any())
        .then(pl.lit("Failed"))
        .when(((pl.col("signal") == card_expiry.NAME) & (kind == "no_payment_method")).any())
        .then(pl.lit("No Payment Method"))
        .when((pl.col("signal") == card_expiry.NAME).any())
        .then(pl.lit("At Risk"))
        .otherwise(pl.lit("Healthy"))
    )


def _facts_sql() -> str:
    return f"""
WITH live AS (
  SELECT h.*, {account_key("h.customer_id")} AS account_id
  FROM history_subscriptions h LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = h.customer_id
  WHERE h.valid_from <= $as_of AND (h.valid_to IS NULL OR h.valid_to > $as_of)
    AND {sql_in("h.status", IN_FORCE_STATUSES)}
),
paid AS ({last_successful_payment_sql(account_key("ch.customer_id"))}
)
SELECT account_id, count(DISTINCT subscription_id) AS subscription_count,
  min(current_period_end) FILTER (WHERE current_period_end > $as_of) AS next_renewal_at,
  list(DISTINCT customer_id ORDER BY customer_id) AS stripe_customer_ids,
  min(paid.last_paid) AS last_successful_payment_at
FROM live LEFT JOIN paid USING (account_id)
GROUP BY account_id
"""


def account_health(
    tables: Tables,
    as_of: datetime,
    settings: SignalSettings,
    signals: pl.DataFrame,
    mrr: pl.DataFrame,
    model_scores: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per account with a live subscription or a signal at ``as_of``.

    ``model_scores`` (:data:`MODEL_SCORE_SCHEMA`), when a model is in force, makes the
    risk score and the expected MRR at risk; accounts it did not score keep the rule-based
    ones.
    """
    if model_scores is None:
        model_scores = pl.DataFrame(schema=MODEL_SCORE_SCHEMA)
    facts = tables.frame(_facts_sql(), {"as_of": as_of})
    totals = mrr.group_by("account_id").agg(
        total_mrr_minor=pl.when(pl.col("reporting_mrr_minor").is_null().any())
        .then(None)
        .otherwise(pl.col("reporting_mrr_minor").sum())
        .cast(pl.Int64),
        has_mrr=pl.lit(True),
    )
    known = (
        signals.filter(pl.col("signal") == cancel_at_period_end.NAME)
        .with_columns(
            eff=pl.col("evidence")
            .str.json_path_match("$.effective_at")
            .str.to_datetime(strict=False)
        )
        .group_by("account_id")
        .agg(churn_effective_at=pl.col("eff").min())
    )
    # The top reason agrees with what the row shows: Payment Health's own signal first
    # (Failed: the failed payment, not a card expiring later), then known churn.
    reasons = (
        signals.filter(~pl.col("signal").is_in(names_of("expansion")))
        .with_columns(_rank=pl.col("signal").replace_strict(REASON_RANK, default=len(REASON_RANK)))
        # Ties (two signals of one rank and score) broken by name and wording: the
        # frames arrive in no set order, and a top reason that flips between two runs
        # of the same data is an Account update Salesforce never needed.
        .sort(["_rank", "score", "signal", "reason"], descending=[False, True, False, False])
        .group_by("account_id", maintain_order=True)
        .agg(signal_reasons=pl.col("reason"))
    )
    model = model_scores.select(pl.col(n).cast(t) for n, t in MODEL_SCORE_SCHEMA.items()).rename(
        {"reasons": "model_reasons"}
    )
    accounts = pl.concat(
        [facts.select("account_id"), signals.select("account_id"), totals.select("account_id")]
    ).unique()
    out = (
        accounts.join(facts, on="account_id", how="left")
        .join(totals, on="account_id", how="left")
        .join(risk_score(signals, settings), on="account_id", how="left")
        .join(payment_health(signals), on="account_id", how="left")
        .join(known, on="account_id", how="left")
        .join(reasons, on="account_id", how="left")
        .join(model, on="account_id", how="left")
        .with_columns(
            risk_score=pl.when(pl.col("churn_probability").is_not_null())
            .then((pl.col("churn_probability").clip(0, 1) * 100).round(0).cast(pl.Int32))
            .otherwise(pl.col("risk_score")),
            top_reasons=pl.concat_list(
                pl.col("signal_reasons").fill_null(pl.lit([], dtype=pl.List(pl.String))),
                pl.col("model_reasons").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            ).list.head(TOP_REASONS),
        )
        .with_columns(
            as_of=pl.lit(as_of).cast(pl.Datetime("us")),
            reporting_currency=pl.lit(settings.reporting_currency.upper()),
            risk_score=pl.col("risk_score").fill_null(0),
            payment_health=pl.col("payment_health").fill_null("Healthy"),
            known_churn=pl.col("churn_effective_at").is_not_null(),
            subscription_count=pl.col("subscription_count").fill_null(0),
            # No MRR rows: 0. MRR rows with a missing rate: unknown (NULL), never 0, or
            # Salesforce would be told an EUR customer pays nothing.
            total_mrr_minor=pl.when(pl.col("has_mrr").is_null())
            .then(0)
            .otherwise(pl.col("total_mrr_minor")),
            stripe_customer_ids=pl.col("stripe_customer_ids").fill_null(
                pl.lit([], dtype=pl.List(pl.String))
            ),
            days_since_last_payment=(
                (pl.lit(as_of) - pl.col("last_successful_payment_at")).dt.total_days()
            ),
        )
        .with_columns(
            mrr_at_risk_minor=pl.when(
                (pl.col("payment_health") == "Failed") | pl.col("known_churn")
            )
            .then(pl.col("total_mrr_minor"))
            .otherwise((pl.col("total_mrr_minor") * pl.col("risk_score") * 2 + 100) // 200)
        )
        .with_columns(
            expected_mrr_at_risk_minor=pl.when(
                (pl.col("payment_health") == "Failed")
                | pl.col("known_churn")
                | pl.col("churn_probability").is_null()
            )
            .then(pl.col("mrr_at_risk_minor"))
            .otherwise(
                (pl.col("total_mrr_minor") * pl.col("churn_probability").clip(0, 1))
                .round(0)
                .cast(pl.Int64)
            )
        )
    )
    return out.select(pl.col(n).cast(t) for n, t in HEALTH_SCHEMA.items()).sort("account_id")
