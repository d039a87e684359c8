"""Card expiry: the card a renewal will be charged to expires before it.

For each automatically charged live subscription at ``as_of`` whose next renewal (the
current period end at ``as_of``; a trial's period ends with the trial) falls within
``card_expiry_horizon_days``: the card is the one Stripe charges, the subscription's
``default_payment_method``, else its ``default_source``, else the customer's
``invoice_settings.default_payment_method``, else the customer's ``default_source``
(Stripe: it "takes precedence over default_source. If neither are set, invoices will use
the customer's invoice_settings.default_payment_method or default_source"). Another card
the customer holds is never tried, so it does not lift the warning. A card is good
through the last day of its expiry month. All of it as known at ``as_of``: the
subscription's defaults from ``history_subscriptions``, the customer's from
``history_customer_defaults``, the card's expiry (updated in place on the same id) from
``history_payment_methods``. Fires when that card expires before the renewal; fires too
when the subscription has no payment method at all.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.facts import IN_FORCE_STATUSES, sql_in
from churn.signals.mrr import account_key
from churn.signals.schema import finish
from churn.signals.tables import Tables

NAME = "card_expiry"

SQL = f"""
WITH h AS (
  SELECT * FROM history_subscriptions
  WHERE valid_from <= $as_of AND (valid_to IS NULL OR valid_to > $as_of)
    AND {sql_in("status", IN_FORCE_STATUSES)}
    AND COALESCE(collection_method, 'charge_automatically') = 'charge_automatically'
    AND NOT cancel_at_period_end
),
pm AS (
  SELECT *, CASE WHEN card_exp_year IS NOT NULL
                 THEN make_timestamp(card_exp_year, card_exp_month, 1, 0, 0, 0) + INTERVAL 1 MONTH
            END AS good_until
  FROM history_payment_methods
  WHERE valid_from <= $as_of AND (valid_to IS NULL OR valid_to > $as_of) AND NOT is_deleted
),
c AS (
  SELECT * FROM history_customer_defaults
  WHERE valid_from <= $as_of AND (valid_to IS NULL OR valid_to > $as_of)
),
s AS (
  SELECT h.subscription_id, h.customer_id, h.currency,
    -- the next renewal at as_of: the current period's end (a trial's period ends with it;
    -- a trial_end long past says nothing about the next renewal)
    COALESCE(h.current_period_end, h.trial_end) AS renewal_at,
    COALESCE(h.default_payment_method, h.default_source, c.default_payment_method,
             c.default_source) AS pm_id,
    {account_key("h.customer_id")} AS account_id
  FROM h LEFT JOIN c ON c.customer_id = h.customer_id
  LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = h.customer_id
),
j AS (
  SELECT s.*, pm.card_brand, pm.card_last4, pm.card_exp_month, pm.card_exp_year, pm.good_until,
    (SELECT count(*) FROM pm o WHERE o.customer_id = s.customer_id) AS attached
  FROM s LEFT JOIN pm ON pm.payment_method_id = s.pm_id
  WHERE s.renewal_at <= $horizon
),
hit AS (
  SELECT *, CASE WHEN pm_id IS NULL AND attached = 0 THEN 'no_payment_method'
                 WHEN good_until IS NOT NULL AND good_until <= renewal_at
                   THEN 'expires_before_renewal' END AS kind,
    -- good through a month already over at as_of: the higher score, and a reason that
    -- says "expired", not "expires" (which reads as a date to come)
    good_until <= $as_of AS expired
  FROM j
)
SELECT account_id,
  CASE WHEN kind = 'no_payment_method' THEN 0.8 WHEN expired THEN 0.9 ELSE 0.6 END AS score,
  CASE WHEN kind = 'no_payment_method'
       THEN 'Subscription ' || subscription_id || ' renews on ' || strftime(renewal_at, '%Y-%m-%d')
            || ' and is charged automatically, but the customer has no payment method.'
       ELSE 'The card ' || COALESCE(card_brand || ' ', '') || 'ending ' || COALESCE(card_last4, '?')
            || CASE WHEN expired THEN ' expired ' ELSE ' expires ' END
            || lpad(CAST(card_exp_month AS VARCHAR), 2, '0') || '/' || card_exp_year
            || CASE WHEN expired
                    THEN ', and it is the card Stripe will charge at the renewal on '
                         || strftime(renewal_at, '%Y-%m-%d') || '.'
                    ELSE ', before the renewal on ' || strftime(renewal_at, '%Y-%m-%d')
                         || ', and it is the card Stripe will charge.' END END AS reason,
  json_object('kind', kind, 'expired', expired,
    'subscription_id', subscription_id, 'payment_method_id', pm_id,
    'card_exp_month', card_exp_month, 'card_exp_year', card_exp_year,
    'card_brand', card_brand, 'card_last4', card_last4,
    'renewal_at', renewal_at)::VARCHAR AS evidence,
  'card_expiry:' || subscription_id || ':' || COALESCE(pm_id, 'none') || ':'
    || strftime(renewal_at, '%Y-%m-%d') AS episode_key
FROM hit WHERE kind IS NOT NULL
"""


def score(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    params = {"as_of": as_of, "horizon": as_of + timedelta(days=settings.card_expiry_horizon_days)}
    return finish(tables.frame(SQL, params), NAME, as_of)
