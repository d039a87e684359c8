"""Downgrade: MRR contraction or seat reduction over a trailing window.

Compares the account's MRR and licensed seats at ``as_of`` with the start of the window;
fires when either fell by at least ``downgrade_min_drop``. A downgrade and an upgrade in
the same window net out. An account whose MRR fell to zero churned: that is a movement,
not a downgrade signal.

**Currencies.** MRR is compared in the reporting currency when every currency the account
pays in converts (at the rates the MRR engine reads). When a rate is missing, amounts in
different currencies are never added (yen are not cents): each currency is compared with
itself, the one that fell most (by share) stands for the account, and the reason says so
(``compared_apart`` in the evidence).

**Occurrences.** A decrease is an instant in the window at which some subscription of the
account carries less MRR (in its own currency: no conversion needed) or fewer licensed
seats than just before: a quantity cut, a cheaper price on the same item, an item swapped
for a cheaper one (a new item and price id), a coupon applied, a move to a longer interval
whose monthly amount is lower, a status that stops carrying MRR. The instants are the
subscription's own history boundaries (versions, items, discounts, ``ended_at``), so MRR
is computed only around them. The episode key is the day of the latest decrease: a
downgrade re-scored on later days keeps its key (one Task), and a further decrease is a
new occurrence. Repeated decreases raise the score. A drop with no decrease behind it
(only a currency rate moved) is not a downgrade.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.mrr import (
    account_key,
    account_mrr_sql,
    item_change_instants,
    item_mrr_sql,
    mrr_around_changes,
    subscription_owner,
)
from churn.signals.schema import finish
from churn.signals.tables import Tables

NAME = "downgrade"

POINTS = "SELECT CAST($start AS TIMESTAMP) AS t UNION ALL SELECT CAST($as_of AS TIMESTAMP)"

# Every instant in (start, as_of] at which a subscription's MRR or seats may change.
_CHANGES = """
  SELECT subscription_id, valid_from AS c FROM history_subscriptions
  WHERE valid_from > $start AND valid_from <= $as_of
  UNION SELECT subscription_id, ended_at FROM history_subscriptions
  WHERE ended_at > $start AND ended_at <= $as_of AND valid_from <= $as_of
  UNION""" + item_change_instants("$start")


def _sql(settings: SignalSettings) -> str:
    return f"""
WITH
-- the items at the two points and around each change: each computed once, read twice
-- (MRR and seats)
pt_items AS MATERIALIZED ({item_mrr_sql(POINTS, settings)}),
m AS ({account_mrr_sql(POINTS, settings, items="SELECT * FROM pt_items")}),
per_cur AS (
  SELECT account_id, upper(currency) AS currency, any_value(reporting_currency) AS rep,
    sum(CASE WHEN t = $start THEN mrr_minor ELSE 0 END) AS cur_start,
    sum(CASE WHEN t = $as_of THEN mrr_minor ELSE 0 END) AS cur_end,
    sum(CASE WHEN t = $start THEN reporting_mrr_minor ELSE 0 END) AS rep_start,
    sum(CASE WHEN t = $as_of THEN reporting_mrr_minor ELSE 0 END) AS rep_end,
    bool_or(reporting_mrr_minor IS NULL) AS missing
  FROM m GROUP BY ALL
),
acc AS (
  SELECT account_id, bool_or(missing) AS missing, bool_or(cur_end > 0) AS any_end,
    string_agg(DISTINCT currency, ', ' ORDER BY currency) FILTER (WHERE missing) AS no_rate
  FROM per_cur GROUP BY account_id
),
mrr AS (
  -- every currency converts: compared in the reporting currency
  SELECT p.account_id, sum(p.rep_start) AS mrr_start, sum(p.rep_end) AS mrr_end,
    any_value(p.rep) AS currency, FALSE AS apart, NULL AS no_rate
  FROM per_cur p JOIN acc a USING (account_id) WHERE NOT a.missing GROUP BY p.account_id
  UNION ALL
  -- a rate missing: each currency with itself, the largest drop stands for the account
  SELECT * FROM (
    SELECT p.account_id, p.cur_start, CASE WHEN a.any_end THEN p.cur_end ELSE 0 END,
      p.currency, TRUE, a.no_rate
    FROM per_cur p JOIN acc a USING (account_id) WHERE a.missing
    QUALIFY row_number() OVER (
      PARTITION BY p.account_id
      ORDER BY CASE WHEN p.cur_start > 0 THEN (p.cur_start - p.cur_end) / p.cur_start
                    ELSE 0 END DESC, p.currency) = 1)
),
seats AS (
  SELECT {account_key("i.customer_id")} AS account_id,
    sum(CASE WHEN i.t = $start THEN i.quantity ELSE 0 END) AS seats_start,
    sum(CASE WHEN i.t = $as_of THEN i.quantity ELSE 0 END) AS seats_end
  FROM pt_items i LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = i.customer_id
  WHERE COALESCE(i.usage_type, 'licensed') = 'licensed'
  GROUP BY ALL
),
-- each account's MRR and seats at both ends: only an account whose drop passes the bar
-- can fire, so only its subscriptions' changes are priced below (the same rows for it)
ends AS (
  SELECT mrr.*, COALESCE(seats.seats_start, 0) AS seats_start,
         COALESCE(seats.seats_end, 0) AS seats_end,
         CASE WHEN mrr_start > 0 THEN (mrr_start - mrr_end) / mrr_start ELSE 0 END AS mrr_drop,
         CASE WHEN COALESCE(seats.seats_start, 0) > 0
              THEN (seats.seats_start - seats.seats_end) / seats.seats_start ELSE 0 END AS seat_drop
  FROM mrr LEFT JOIN seats USING (account_id)
),
fell AS MATERIALIZED (
  SELECT * FROM ends WHERE mrr_end > 0 AND (mrr_drop >= $min_drop OR seat_drop >= $min_drop)
),
owner AS ({subscription_owner()}),
chg AS MATERIALIZED (
  SELECT * FROM ({_CHANGES})
  WHERE subscription_id IN (SELECT o.subscription_id FROM owner o SEMI JOIN fell USING (account_id))
),
{mrr_around_changes(settings)},
sub_seats AS (
  SELECT subscription_id, t, sum(quantity) AS seats
  FROM around_items
  WHERE COALESCE(usage_type, 'licensed') = 'licensed' GROUP BY ALL
),
decreases AS (
  SELECT o.account_id, c.c AS changed_at
  FROM chg c JOIN owner o USING (subscription_id)
  LEFT JOIN sub_mrr ma ON ma.subscription_id = c.subscription_id AND ma.t = c.c
  LEFT JOIN sub_mrr mb
    ON mb.subscription_id = c.subscription_id AND mb.t = c.c - INTERVAL 1 MICROSECOND
  LEFT JOIN sub_seats sa ON sa.subscription_id = c.subscription_id AND sa.t = c.c
  LEFT JOIN sub_seats sb
    ON sb.subscription_id = c.subscription_id AND sb.t = c.c - INTERVAL 1 MICROSECOND
  WHERE COALESCE(ma.mrr_minor, 0) < COALESCE(mb.mrr_minor, 0)
     OR COALESCE(sa.seats, 0) < COALESCE(sb.seats, 0)
),
n AS (
  SELECT account_id, count(DISTINCT changed_at) AS decreases,
         max(changed_at) AS last_decrease_at
  FROM decreases GROUP BY account_id
),
j AS (
  SELECT fell.*, n.decreases, n.last_decrease_at FROM fell JOIN n USING (account_id)
)
SELECT account_id,
  least(1.0, 0.3 + 1.5 * greatest(mrr_drop, seat_drop) + 0.15 * greatest(decreases - 1, 0))
    AS score,
  CASE WHEN mrr_drop >= $min_drop
       THEN 'MRR' || CASE WHEN apart THEN ' in ' || currency ELSE '' END || ' fell '
            || CAST(round(100 * mrr_drop) AS BIGINT) || '% in the last ' || $window || ' days'
       ELSE 'Seats fell from ' || seats_start || ' to ' || seats_end || ' in the last '
            || $window || ' days' END
    || CASE WHEN decreases > 1 THEN ' (' || decreases || ' downgrades)' ELSE '' END
    || CASE WHEN apart THEN ' (no rate for ' || no_rate
            || ': each currency compared with itself, not added).' ELSE '.' END AS reason,
  json_object('mrr_start_minor', mrr_start, 'mrr_end_minor', mrr_end,
    'currency', currency, 'compared_apart', apart, 'seats_start', seats_start,
    'seats_end', seats_end, 'downgrades', decreases, 'window_days', $window)::VARCHAR
    AS evidence,
  'downgrade:' || account_id || ':' || strftime(last_decrease_at, '%Y-%m-%d') AS episode_key
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
