"""Seat utilization: active seats over purchased seats across a trailing window.

Purchased seats: licensed quantities of the account's live subscriptions at ``as_of``.
Active seats: the usage feed's daily counts in ``(as_of - seat_window_days, as_of]``
(keyed by Account Id or by Stripe customer id, mapped through the links). Average use
below ``seat_low_utilization`` is churn risk (``seat_utilization``); every day at or above
``seat_expansion_utilization`` is an expansion signal (``seat_expansion``), kept apart
from risk. Both need at least ``seat_min_days`` days of usage in the window: a feed that
started yesterday says nothing sustained (the demo flagged 0-of-1-seat accounts on one
day's data). No usage data: no row, never a guess. Two signals, one module: :func:`score`
and :func:`score_expansion` share the window's arithmetic.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.mrr import AS_OF_POINT, account_key, item_mrr_sql
from churn.signals.schema import finish
from churn.signals.tables import Tables

NAME = "seat_utilization"
EXPANSION = "seat_expansion"


def _window(settings: SignalSettings) -> str:
    """CTEs ending in ``r``: per account, purchased seats and use over the window."""
    return f"""
WITH items AS ({item_mrr_sql(AS_OF_POINT, settings)}),
purchased AS (
  SELECT {account_key("i.customer_id")} AS account_id, sum(i.quantity) AS seats
  FROM items i LEFT JOIN core_account_links l ON l.customer_id = i.customer_id
  WHERE COALESCE(i.usage_type, 'licensed') = 'licensed'
  GROUP BY ALL HAVING sum(i.quantity) > 0
),
usage AS (
  SELECT {account_key("u.account_id")} AS account_id, u.day, sum(u.active_seats) AS active
  FROM core_usage u LEFT JOIN core_account_links l ON l.customer_id = u.account_id
  WHERE u.day > CAST($start AS DATE) AND u.day <= CAST($as_of AS DATE)
  GROUP BY ALL
),
agg AS (
  SELECT p.account_id, p.seats, count(*) AS days, avg(u.active) AS avg_active,
         min(u.active) AS min_active
  FROM purchased p JOIN usage u USING (account_id) GROUP BY ALL
),
r AS (SELECT *, avg_active / seats AS util, min_active / seats AS min_util FROM agg)
"""


def _low_sql(settings: SignalSettings) -> str:
    return f"""{_window(settings)}
SELECT account_id,
  1.0 - util / $low AS score,
  'Only ' || CAST(round(100 * util) AS BIGINT) || '% of ' || seats
    || ' purchased seats were used on average over the last ' || days || ' days.' AS reason,
  json_object('purchased_seats', seats, 'avg_active_seats', round(avg_active, 2),
    'utilization', round(util, 4), 'days_with_data', days)::VARCHAR AS evidence,
  'seat_utilization:' || account_id AS episode_key
FROM r WHERE util < $low AND days >= $min_days
"""


def _expansion_sql(settings: SignalSettings) -> str:
    return f"""{_window(settings)}
SELECT account_id, least(1.0, min_util) AS score,
  'All ' || seats || ' purchased seats are in use: at least '
    || CAST(floor(100 * min_util) AS BIGINT) || '% every day for ' || days
    || ' days; room to expand.' AS reason,
  json_object('purchased_seats', seats, 'min_active_seats', min_active,
    'utilization', round(util, 4), 'days_with_data', days)::VARCHAR AS evidence,
  'seat_expansion:' || account_id AS episode_key
FROM r WHERE min_util >= $high AND days >= $min_days
"""


def _params(as_of: datetime, settings: SignalSettings) -> dict[str, object]:
    return {
        "as_of": as_of,
        "start": as_of - timedelta(days=settings.seat_window_days),
        "low": settings.seat_low_utilization,
        "high": settings.seat_expansion_utilization,
        "min_days": settings.seat_min_days,
    }


def score(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """Low seat use (churn risk)."""
    params = {k: v for k, v in _params(as_of, settings).items() if k != "high"}
    return finish(tables.frame(_low_sql(settings), params), NAME, as_of)


def score_expansion(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """Every seat in use every day of the window (an expansion lead, severity info)."""
    params = {k: v for k, v in _params(as_of, settings).items() if k != "low"}
    frame = tables.frame(_expansion_sql(settings), params)
    return finish(frame, EXPANSION, as_of, info=True)
