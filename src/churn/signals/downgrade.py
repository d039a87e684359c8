"""Downgrade: MRR contraction or seat reduction over a trailing window.

Compares the account's MRR (reporting currency, or original when a rate is missing) and
licensed seats at ``as_of`` with the start of the window; fires when either fell by at
least ``downgrade_min_drop``. A downgrade and an upgrade in the same window net out. An
account whose MRR fell to zero churned: that is a movement, not a downgrade signal.
Repeated downgrades (several decreasing item changes in the window) raise the score.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.mrr import account_key, account_mrr_sql, item_mrr_sql
from churn.signals.schema import finish
from churn.signals.tables import Tables

NAME = "downgrade"

POINTS = "SELECT CAST($start AS TIMESTAMP) AS t UNION ALL SELECT CAST($as_of AS TIMESTAMP)"


def _sql(settings: SignalSettings) -> str:
    return f"""
WITH m AS ({account_mrr_sql(POINTS, settings)}),
mrr AS (
  SELECT account_id,
    sum(CASE WHEN t = $start THEN COALESCE(reporting_mrr_minor, mrr_minor) ELSE 0 END) AS mrr_start,
    sum(CASE WHEN t = $as_of THEN COALESCE(reporting_mrr_minor, mrr_minor) ELSE 0 END) AS mrr_end,
    min(reporting_currency) AS reporting_currency
  FROM m GROUP BY account_id
),
items AS ({item_mrr_sql(POINTS, settings)}),
seats AS (
  SELECT {account_key("i.customer_id")} AS account_id,
    sum(CASE WHEN i.t = $start THEN i.quantity ELSE 0 END) AS seats_start,
    sum(CASE WHEN i.t = $as_of THEN i.quantity ELSE 0 END) AS seats_end
  FROM items i LEFT JOIN core_account_links l ON l.customer_id = i.customer_id
  WHERE COALESCE(i.usage_type, 'licensed') = 'licensed'
  GROUP BY ALL
),
changes AS (
  SELECT {account_key("h.customer_id")} AS account_id, cur.valid_from AS changed_at
  FROM history_subscription_items cur
  JOIN history_subscription_items prev
    ON prev.item_id = cur.item_id AND prev.valid_to = cur.valid_from
  JOIN core_prices pc ON pc.price_id = cur.price_id
  JOIN core_prices pp ON pp.price_id = prev.price_id
  JOIN history_subscriptions h
    ON h.subscription_id = cur.subscription_id
   AND h.valid_from <= cur.valid_from AND (h.valid_to IS NULL OR h.valid_to > cur.valid_from)
  LEFT JOIN core_account_links l ON l.customer_id = h.customer_id
  WHERE cur.valid_from > $start AND cur.valid_from <= $as_of
    AND (COALESCE(cur.quantity, 1) < COALESCE(prev.quantity, 1)
         OR COALESCE(pc.unit_amount, 0) * COALESCE(cur.quantity, 1)
            < COALESCE(pp.unit_amount, 0) * COALESCE(prev.quantity, 1))
),
n AS (
  SELECT account_id, count(*) AS decreases, max(changed_at) AS last_decrease_at
  FROM changes GROUP BY account_id
),
j AS (
  SELECT mrr.*, COALESCE(seats.seats_start, 0) AS seats_start,
         COALESCE(seats.seats_end, 0) AS seats_end, COALESCE(n.decreases, 0) AS decreases,
         n.last_decrease_at,
         CASE WHEN mrr_start > 0 THEN (mrr_start - mrr_end) / mrr_start ELSE 0 END AS mrr_drop,
         CASE WHEN COALESCE(seats.seats_start, 0) > 0
              THEN (seats.seats_start - seats.seats_end) / seats.seats_start ELSE 0 END AS seat_drop
  FROM mrr LEFT JOIN seats USING (account_id) LEFT JOIN n USING (account_id)
)
SELECT account_id,
  least(1.0, 0.3 + 1.5 * greatest(mrr_drop, seat_drop) + 0.15 * greatest(decreases - 1, 0))
    AS score,
  CASE WHEN mrr_drop >= $min_drop
       THEN 'MRR fell ' || CAST(round(100 * mrr_drop) AS BIGINT) || '% in the last '
            || $window || ' days'
       ELSE 'Seats fell from ' || seats_start || ' to ' || seats_end || ' in the last '
            || $window || ' days' END
    || CASE WHEN decreases > 1 THEN ' (' || decreases || ' downgrades).' ELSE '.' END AS reason,
  json_object('mrr_start_minor', mrr_start, 'mrr_end_minor', mrr_end,
    'currency', reporting_currency, 'seats_start', seats_start, 'seats_end', seats_end,
    'downgrades', decreases, 'window_days', $window)::VARCHAR AS evidence,
  'downgrade:' || account_id || ':'
    || strftime(COALESCE(last_decrease_at, CAST($as_of AS TIMESTAMP)), '%Y-%m-%d') AS episode_key
FROM j
WHERE mrr_end > 0 AND (mrr_drop >= $min_drop OR seat_drop >= $min_drop)
"""


def score(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    params = {
        "as_of": as_of,
        "start": as_of - timedelta(days=settings.downgrade_window_days),
        "min_drop": settings.downgrade_min_drop,
        "window": settings.downgrade_window_days,
    }
    return finish(tables.frame(_sql(settings), params), NAME, as_of)
