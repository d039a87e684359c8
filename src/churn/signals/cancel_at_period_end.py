"""Cancel at period end: a live subscription scheduled to end (known churn, shown apart).

``cancel_at_period_end`` (effective at the current period end) or a future ``cancel_at``;
the episode is the subscription and the date it takes effect, and it resolves when the
cancellation is withdrawn (the history row at ``as_of`` no longer carries it).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.facts import IN_FORCE_STATUSES, sql_in
from churn.signals.mrr import AS_OF_POINT, account_key, subscription_mrr_sql
from churn.signals.schema import finish
from churn.signals.tables import Tables

NAME = "cancel_at_period_end"


def _sql(settings: SignalSettings) -> str:
    return f"""
WITH h AS (
  SELECT * FROM history_subscriptions
  WHERE valid_from <= $as_of AND (valid_to IS NULL OR valid_to > $as_of)
    AND {sql_in("status", IN_FORCE_STATUSES)}
    AND (cancel_at_period_end OR cancel_at > $as_of)
),
m AS ({subscription_mrr_sql(AS_OF_POINT, settings)}),
s AS (
  SELECT h.*, {account_key("h.customer_id")} AS account_id,
    CASE WHEN h.cancel_at > $as_of THEN h.cancel_at ELSE h.current_period_end END AS effective_at,
    COALESCE(m.mrr_minor, 0) AS mrr_minor
  FROM h LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = h.customer_id
  LEFT JOIN m ON m.subscription_id = h.subscription_id
)
SELECT account_id,
  CASE WHEN date_diff('day', CAST($as_of AS TIMESTAMP), effective_at) <= 30 THEN 1.0 ELSE 0.8 END
    AS score,
  'Subscription ' || subscription_id || ' is set to cancel on '
    || strftime(effective_at, '%Y-%m-%d') || ' (in '
    || date_diff('day', CAST($as_of AS TIMESTAMP), effective_at) || ' days).' AS reason,
  json_object('subscription_id', subscription_id, 'effective_at', effective_at,
    'days_until', date_diff('day', CAST($as_of AS TIMESTAMP), effective_at),
    'mrr_at_stake_minor', mrr_minor, 'currency', currency,
    'cancel_at_period_end', cancel_at_period_end, 'cancel_at', cancel_at)::VARCHAR AS evidence,
  'cancel:' || subscription_id || ':' || strftime(effective_at, '%Y-%m-%d') AS episode_key
FROM s
"""


def score(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    return finish(tables.frame(_sql(settings), {"as_of": as_of}), NAME, as_of)
