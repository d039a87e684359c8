"""Point-in-time features for the churn-risk model: many snapshot dates in one statement.

For every snapshot ``t`` and every account *live* at ``t`` (a subscription in force,
:data:`~churn.signals.facts.IN_FORCE_STATUSES`), one row of numeric features computed
only from what was known at ``t``:

- subscription state (valid intervals of ``history_subscriptions`` holding ``t``),
- MRR at ``t`` and at ``t - 30/90/180`` days (the MRR engine, :mod:`churn.signals.mrr`),
- seats (licensed per-unit quantities) at ``t`` and ``t - 90`` days, and in the middle of
  each 30-day usage window (each window's use is read against the seats held in it),
- usage samples dated before ``t``'s day, up to 180 days back, of any cadence (missing
  usage is a value: ``NaN``, never a crash),
- charges created by ``t``; invoices by their finalized/paid/voided times,
- the card the renewal is charged to and its expiry, as known at ``t`` (defaults and
  card versions from the payment-method history),
- Salesforce context (owner active, Opportunities, contacts) as known at ``t``: the
  warehouse keeps each Salesforce record as last seen with its ``SystemModstamp``, so a
  record unchanged since ``t`` is read as it stands and one modified after ``t`` (state
  then unknown: no field history, no ``CreatedDate``) is not counted; Opportunities
  lost by their close date.

Accounts with a scheduled cancellation at ``t`` (``cancel_at_period_end`` or a
``cancel_at``) are *known churn*: flagged ``known_churn`` and kept out of training and
evaluation by the callers. The label (``churned``: no subscription in force at
``t + horizon``) is computed alongside but read only by training and evaluation, and only
for snapshots whose horizon ends at or before the training cutoff.

Every read of history lives in this one module (:func:`features_sql`), so it can be
re-pointed when the history tables change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.facts import IN_FORCE_STATUSES, sql_in
from churn.signals.mrr import account_key, account_mrr_sql, links_at_join
from churn.signals.payment_failure import CUSTOMER_ACTION, HARD
from churn.signals.tables import Tables


@dataclass(frozen=True)
class Feature:
    """One model input: its column and what it means (for the card and the reasons)."""

    name: str
    description: str


#: Every feature, in the order of the model's input columns.
FEATURES: tuple[Feature, ...] = (
    Feature("tenure_days", "days since the account's first subscription started"),
    Feature("subscription_count", "subscriptions in force"),
    Feature("is_annual", "1 when a subscription in force bills yearly"),
    Feature("is_trialing", "1 when a subscription is in its trial"),
    Feature("is_unpaid", "1 when a subscription is unpaid (collection stopped)"),
    Feature("days_to_renewal", "days until the next period end"),
    Feature("has_discount", "1 when a discount applies to a subscription in force"),
    Feature("log_mrr", "log(1 + MRR in reporting major units)"),
    Feature("mrr_change_30d", "relative MRR change over 30 days (NaN: no MRR then)"),
    Feature("mrr_change_90d", "relative MRR change over the last 90 days"),
    Feature("mrr_change_180d", "relative MRR change over the last 180 days"),
    Feature("downgrade_180d", "fall of MRR from its 180-day peak, as a share of the peak"),
    Feature("seats", "licensed seats held"),
    Feature("seat_change_90d", "relative change of seats over 90 days (NaN: none then)"),
    Feature("utilization_30d", "active seats / seats held, last 30 days (NaN: no usage)"),
    Feature("utilization_change_30d", "utilization now minus 30 days before"),
    Feature("utilization_change_60d", "utilization now minus 60 days before"),
    Feature("utilization_change_90d", "utilization now minus 90 days before"),
    Feature("usage_missing", "1 when no usage sample falls in the last 30 days"),
    Feature("utilization_14d", "active seats / seats held, last 14 days (NaN: no usage)"),
    Feature("utilization_90d", "mean of the monthly utilizations of the last 90 days"),
    Feature("utilization_180d", "mean of the monthly utilizations of the last 180 days"),
    Feature("utilization_min_180d", "lowest monthly utilization of the last 180 days"),
    Feature("utilization_fall_180d", "highest monthly utilization of 180 days minus the last"),
    Feature("utilization_change_180d", "utilization now minus 150 to 180 days before"),
    Feature("utilization_slope_90d", "trend of seat use over 90 days, per 30 days"),
    Feature("failed_since_payment", "failed charges since the last successful one"),
    Feature("days_in_failure", "days since the first failure not yet followed by a payment"),
    Feature("decline_hard", "1 when the last failure since a payment was a hard decline"),
    Feature("decline_customer_action", "1 when that failure needs the customer to act"),
    Feature("open_invoices", "invoices finalized and still unpaid"),
    Feature("days_invoice_open", "days the oldest unpaid invoice has been open"),
    Feature("uncollectible_365d", "invoices written off in the last 12 months"),
    Feature("failures_30d", "failed charges in the last 30 days"),
    Feature("failures_90d", "failed charges in the last 90 days"),
    Feature("failures_180d", "failed charges in the last 6 months"),
    Feature("failures_365d", "failed charges in the last 12 months"),
    Feature("recoveries_180d", "invoices paid after more than one attempt, last 6 months"),
    Feature("recoveries_365d", "invoices paid after more than one attempt, last 12 months"),
    Feature("days_since_failure", "days since the last failed charge (NaN: never)"),
    Feature("days_since_payment", "days since the last successful charge (NaN: never)"),
    Feature("card_days_after_renewal", "days the card stays good after the renewal"),
    Feature("no_payment_method", "1 when the renewal has no payment method"),
    Feature("owner_inactive", "1 when the Salesforce owner was deactivated by the snapshot"),
    Feature("open_opportunities", "Opportunities open at the snapshot"),
    Feature("lost_opportunities_365d", "Opportunities closed lost in the last year"),
    Feature("contacts", "Salesforce contacts on the Account unchanged since the snapshot"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
DESCRIPTIONS: dict[str, str] = {f.name: f.description for f in FEATURES}

#: The identifying and outcome columns beside the features.
KEY_COLUMNS = ("account_id", "snapshot_at", "known_churn", "churned", "mrr_minor")

_DAY = "86400.0"


def _days(a: str, b: str) -> str:
    """SQL: (a - b) in days, as a double."""
    return f"(epoch({a}) - epoch({b})) / {_DAY}"


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def features_sql(settings: SignalSettings) -> str:
    """SQL over ``$snaps`` (a list of timestamps) and ``$horizon_days``: one row per live
    account and snapshot, :data:`KEY_COLUMNS` then :data:`FEATURE_NAMES`."""
    mrr_points = """
      SELECT DISTINCT t - to_days(k) AS t FROM snaps, (VALUES (0), (30), (90), (180)) v(k)"""
    return f"""
WITH snaps AS (SELECT DISTINCT CAST(unnest($snaps) AS TIMESTAMP) AS t),
-- each customer's Account as linked at each snapshot (links as known then)
acct AS (
  SELECT s.t, c.customer_id, {account_key("c.customer_id")} AS account_id
  FROM snaps s CROSS JOIN (SELECT DISTINCT customer_id FROM history_subscriptions) c
  {links_at_join("c.customer_id", "s.t")}
),
subs0 AS (
  SELECT s.t, a.account_id, h.*
  FROM snaps s JOIN history_subscriptions h
    ON h.valid_from <= s.t AND (h.valid_to IS NULL OR h.valid_to > s.t)
  JOIN acct a ON a.t = s.t AND a.customer_id = h.customer_id
  WHERE {sql_in("h.status", IN_FORCE_STATUSES)}
),
sub_iv AS (
  SELECT s.t, s.subscription_id, bool_or(p.recurring_interval = 'year') AS yearly,
    date_diff('month', s.t, max(s.current_period_end)) AS km,
    date_diff('year', s.t, max(s.current_period_end)) AS ky
  FROM subs0 s JOIN history_subscription_items i
    ON i.subscription_id = s.subscription_id
   AND i.valid_from <= s.t AND (i.valid_to IS NULL OR i.valid_to > s.t)
  JOIN core_prices p ON p.price_id = i.price_id
  GROUP BY s.t, s.subscription_id
),
subs AS (
  -- The next renewal from the billing anchor: a version's period end may be one its
  -- history rebuilt later (another period of the same cycle), so it is stepped by the
  -- interval to the first boundary after t; a trial ends at its own date.
  SELECT s0.*,
    CASE WHEN s0.trial_end > s0.t THEN s0.trial_end
         WHEN s0.current_period_end IS NULL THEN NULL
         WHEN iv.yearly THEN
           CASE WHEN s0.current_period_end - to_years(CAST(iv.ky AS INTEGER)) > s0.t
                THEN s0.current_period_end - to_years(CAST(iv.ky AS INTEGER))
                ELSE s0.current_period_end - to_years(CAST(iv.ky - 1 AS INTEGER)) END
         ELSE
           CASE WHEN s0.current_period_end - to_months(CAST(iv.km AS INTEGER)) > s0.t
                THEN s0.current_period_end - to_months(CAST(iv.km AS INTEGER))
                ELSE s0.current_period_end - to_months(CAST(iv.km - 1 AS INTEGER)) END
    END AS renewal_at
  FROM subs0 s0 LEFT JOIN sub_iv iv USING (t, subscription_id)
),
live AS (
  SELECT t, account_id,
    count(DISTINCT subscription_id) AS subscription_count,
    bool_or(cancel_at_period_end OR cancel_at IS NOT NULL) AS known_churn,
    max(CASE WHEN status = 'trialing' THEN 1 ELSE 0 END) AS is_trialing,
    max(CASE WHEN status = 'unpaid' THEN 1 ELSE 0 END) AS is_unpaid,
    min({_days("renewal_at", "t")}) AS days_to_renewal
  FROM subs GROUP BY ALL
),
tenure AS (
  SELECT s.t, a.account_id, min(h.valid_from) AS first_at
  FROM snaps s JOIN history_subscriptions h ON h.valid_from <= s.t
  JOIN acct a ON a.t = s.t AND a.customer_id = h.customer_id GROUP BY ALL
),
items AS (
  SELECT s.t, s.account_id, i.quantity, p.recurring_interval, p.usage_type, p.billing_scheme
  FROM subs s JOIN history_subscription_items i
    ON i.subscription_id = s.subscription_id
   AND i.valid_from <= s.t AND (i.valid_to IS NULL OR i.valid_to > s.t)
  JOIN core_prices p ON p.price_id = i.price_id
),
plan AS (
  SELECT t, account_id,
    max(CASE WHEN recurring_interval = 'year' THEN 1 ELSE 0 END) AS is_annual,
    sum(CASE WHEN COALESCE(usage_type, 'licensed') = 'licensed'
             AND COALESCE(billing_scheme, 'per_unit') = 'per_unit'
             THEN COALESCE(quantity, 1) ELSE 0 END) AS seats
  FROM items GROUP BY ALL
),
seats_then AS (
  SELECT s.t, a.account_id,
    sum(CASE WHEN COALESCE(p.usage_type, 'licensed') = 'licensed'
             AND COALESCE(p.billing_scheme, 'per_unit') = 'per_unit'
             THEN COALESCE(i.quantity, 1) ELSE 0 END) AS seats_90
  FROM snaps s JOIN history_subscriptions h
    ON h.valid_from <= s.t - INTERVAL 90 DAY
   AND (h.valid_to IS NULL OR h.valid_to > s.t - INTERVAL 90 DAY)
   AND {sql_in("h.status", IN_FORCE_STATUSES)}
  JOIN acct a ON a.t = s.t AND a.customer_id = h.customer_id
  JOIN history_subscription_items i
    ON i.subscription_id = h.subscription_id AND i.valid_from <= s.t - INTERVAL 90 DAY
   AND (i.valid_to IS NULL OR i.valid_to > s.t - INTERVAL 90 DAY)
  JOIN core_prices p ON p.price_id = i.price_id
  GROUP BY ALL
),
-- licensed seats held in the middle of each 30-day usage window (w = 0: the last 30 days,
-- w = 1 the 30 before...): each window's use is read against the seats held then, not
-- today's (a seat purchase is growth, not a rise of use)
seats_w AS (
  SELECT s.t, v.w, a.account_id,
    sum(CASE WHEN COALESCE(p.usage_type, 'licensed') = 'licensed'
             AND COALESCE(p.billing_scheme, 'per_unit') = 'per_unit'
             THEN COALESCE(i.quantity, 1) ELSE 0 END) AS seats
  FROM snaps s CROSS JOIN (VALUES (0), (1), (2), (3), (4), (5)) v(w)
  JOIN history_subscriptions h
    ON h.valid_from <= s.t - to_days(30 * v.w + 15)
   AND (h.valid_to IS NULL OR h.valid_to > s.t - to_days(30 * v.w + 15))
   AND {sql_in("h.status", IN_FORCE_STATUSES)}
  JOIN acct a ON a.t = s.t AND a.customer_id = h.customer_id
  JOIN history_subscription_items i
    ON i.subscription_id = h.subscription_id AND i.valid_from <= s.t - to_days(30 * v.w + 15)
   AND (i.valid_to IS NULL OR i.valid_to > s.t - to_days(30 * v.w + 15))
  JOIN core_prices p ON p.price_id = i.price_id
  GROUP BY ALL
),
disc AS (
  SELECT s.t, s.account_id, 1 AS has_discount
  FROM subs s JOIN core_subscription_discounts d ON d.subscription_id = s.subscription_id
  WHERE (d.starts_at IS NULL OR d.starts_at <= s.t) AND (d.ends_at IS NULL OR d.ends_at > s.t)
  GROUP BY ALL
),
-- MRR per customer at t - k, keyed by the customer's Account as linked at snapshot t, so
-- the changes compare the same customers
mrr_rows AS ({account_mrr_sql(mrr_points, settings, by_customer=True)}),
mrr_at AS (
  SELECT s.t, v.k, {account_key("r.account_id")} AS account_id,
    sum(COALESCE(r.reporting_mrr_minor, 0)) AS mrr
  FROM snaps s CROSS JOIN (VALUES (0), (30), (90), (180)) v(k)
  JOIN mrr_rows r ON r.t = s.t - to_days(v.k)
  {links_at_join("r.account_id", "s.t")}
  GROUP BY ALL
),
mrr AS (
  SELECT a.t, a.account_id,
    COALESCE(m0.mrr, 0) AS m0, COALESCE(m30.mrr, 0) AS m30, COALESCE(m90.mrr, 0) AS m90,
    COALESCE(m180.mrr, 0) AS m180
  FROM live a
  LEFT JOIN mrr_at m0 ON m0.account_id = a.account_id AND m0.t = a.t AND m0.k = 0
  LEFT JOIN mrr_at m30 ON m30.account_id = a.account_id AND m30.t = a.t AND m30.k = 30
  LEFT JOIN mrr_at m90 ON m90.account_id = a.account_id AND m90.t = a.t AND m90.k = 90
  LEFT JOIN mrr_at m180 ON m180.account_id = a.account_id AND m180.t = a.t AND m180.k = 180
),
-- the usage feed as known at each snapshot (core_usage_as_of for many snapshots at
-- once): a sample never restated as it is; a restated one by the version loaded last at
-- or before t, or, when every version was loaded after t (a feed's history loaded on a
-- later first run), by its first version, the earliest statement of that day
use_known AS (
  SELECT s.t, u.account_id, CAST(u.day AS TIMESTAMP) AS day, u.active_seats
  FROM snaps s JOIN (FROM core_usage ANTI JOIN core_usage_history USING (account_id, day)) u
    ON CAST(u.day AS TIMESTAMP) < s.t AND CAST(u.day AS TIMESTAMP) >= s.t - INTERVAL 180 DAY
  UNION ALL
  SELECT t, account_id, day, active_seats FROM (
    SELECT s.t, v.account_id, CAST(v.day AS TIMESTAMP) AS day, v.active_seats, v.loaded_at
    FROM snaps s JOIN (
      SELECT u.account_id, u.day, u.active_seats, u.loaded_at
      FROM core_usage u SEMI JOIN core_usage_history h USING (account_id, day)
      UNION ALL
      SELECT account_id, day, active_seats, loaded_at FROM core_usage_history
    ) v ON CAST(v.day AS TIMESTAMP) < s.t AND CAST(v.day AS TIMESTAMP) >= s.t - INTERVAL 180 DAY
    QUALIFY row_number() OVER (
      PARTITION BY s.t, v.account_id, v.day
      ORDER BY v.loaded_at <= s.t DESC,
               CASE WHEN v.loaded_at <= s.t THEN -epoch(v.loaded_at)
                    ELSE epoch(v.loaded_at) END) = 1
  )
),
use_w AS (
  -- average active seats per 30-day window before t: w0 = (t-30d, t], w1 the 30 before...
  -- (a feed of any cadence: daily, a weekly rollup, both; each window its samples' mean;
  -- a sample keyed by customer counts for its Account as linked at t)
  SELECT u.t, {account_key("u.account_id")} AS account_id,
    CAST(floor(({_days("u.t", "u.day")} ) / 30) AS INTEGER) AS w,
    avg(u.active_seats) AS active,
    avg(u.active_seats) FILTER (WHERE u.day >= u.t - INTERVAL 14 DAY)
      AS active_14,
    sum(u.active_seats) FILTER (WHERE u.day >= u.t - INTERVAL 90 DAY) AS sy,
    sum(u.active_seats * {_days("u.day", "u.t")})
      FILTER (WHERE u.day >= u.t - INTERVAL 90 DAY) AS sxy,
    sum({_days("u.day", "u.t")})
      FILTER (WHERE u.day >= u.t - INTERVAL 90 DAY) AS sx,
    sum(pow({_days("u.day", "u.t")}, 2))
      FILTER (WHERE u.day >= u.t - INTERVAL 90 DAY) AS sxx,
    count(*) FILTER (WHERE u.day >= u.t - INTERVAL 90 DAY) AS n90
  FROM use_known u
  {links_at_join("u.account_id", "u.t")}
  GROUP BY ALL
),
use_u AS (
  -- each window's use as a share of the seats held in it (today's seats when none were
  -- held then: usage before the first subscription's start)
  SELECT w.*, w.active / NULLIF(COALESCE(sw.seats, pl.seats), 0) AS util
  FROM use_w w
  LEFT JOIN seats_w sw ON sw.t = w.t AND sw.account_id = w.account_id AND sw.w = w.w
  LEFT JOIN plan pl ON pl.t = w.t AND pl.account_id = w.account_id
),
use_p AS (
  SELECT t, account_id,
    max(util) FILTER (WHERE w = 0) AS u0, max(util) FILTER (WHERE w = 1) AS u1,
    max(util) FILTER (WHERE w = 2) AS u2, max(util) FILTER (WHERE w = 3) AS u3,
    max(util) FILTER (WHERE w = 5) AS u5,
    max(active) FILTER (WHERE w = 0) AS a0,
    max(active_14) AS a14,
    avg(util) FILTER (WHERE w < 3) AS u90, avg(util) AS u180,
    min(util) AS umin, max(util) AS umax,
    -- least squares slope of active seats on days over the last 90 days' samples
    CASE WHEN sum(n90) >= 3 AND sum(n90) * sum(sxx) - sum(sx) * sum(sx) > 0
         THEN (sum(n90) * sum(sxy) - sum(sx) * sum(sy))
              / (sum(n90) * sum(sxx) - sum(sx) * sum(sx)) END AS slope
  FROM use_u GROUP BY ALL
),
-- charges known at each snapshot, keyed by the Account linked then
charges AS (
  SELECT s.t, {account_key("ch.customer_id")} AS account_id, ch.created_at, ch.status,
    ch.decline_code, ch.failure_code
  FROM snaps s JOIN core_charges ch ON ch.created_at <= s.t
  {links_at_join("ch.customer_id", "s.t")}
),
pay AS (
  SELECT c.t, c.account_id,
    count(*) FILTER (WHERE c.status = 'failed' AND c.created_at > c.t - INTERVAL 30 DAY)
      AS failures_30d,
    count(*) FILTER (WHERE c.status = 'failed' AND c.created_at > c.t - INTERVAL 90 DAY)
      AS failures_90d,
    count(*) FILTER (WHERE c.status = 'failed' AND c.created_at > c.t - INTERVAL 180 DAY)
      AS failures_180d,
    count(*) FILTER (WHERE c.status = 'failed' AND c.created_at > c.t - INTERVAL 365 DAY)
      AS failures_365d,
    max(c.created_at) FILTER (WHERE c.status = 'failed') AS last_failed,
    max(c.created_at) FILTER (WHERE c.status = 'succeeded') AS last_paid
  FROM charges c GROUP BY ALL
),
inv AS (
  SELECT * FROM core_invoices WHERE NOT is_deleted AND status <> 'draft'
),
streak AS (
  -- failed charges since the last successful one: the customer is in dunning now
  SELECT c.t, c.account_id, count(*) AS failed_since_payment,
    min(c.created_at) AS streak_from,
    -- two failures in one second: the greater code, not whichever thread came last
    arg_max(COALESCE(c.decline_code, c.failure_code),
            (c.created_at, COALESCE(c.decline_code, c.failure_code))) AS last_code
  FROM charges c
  LEFT JOIN pay py ON py.t = c.t AND py.account_id = c.account_id
  WHERE c.status = 'failed' AND (py.last_paid IS NULL OR c.created_at > py.last_paid)
  GROUP BY ALL
),
invs AS (
  SELECT s.t, {account_key("i.customer_id")} AS account_id,
    -- paid after more than one attempt: a failure that was recovered
    count(*) FILTER (WHERE i.paid_at <= s.t AND i.paid_at > s.t - INTERVAL 180 DAY
                       AND i.attempt_count > 1) AS recoveries_180d,
    count(*) FILTER (WHERE i.paid_at <= s.t AND i.paid_at > s.t - INTERVAL 365 DAY
                       AND i.attempt_count > 1) AS recoveries_365d,
    count(*) FILTER (WHERE i.marked_uncollectible_at <= s.t
                       AND i.marked_uncollectible_at > s.t - INTERVAL 365 DAY)
      AS uncollectible_365d,
    count(*) FILTER (WHERE NOT COALESCE(i.paid_at <= s.t, FALSE)
                       AND NOT COALESCE(i.voided_at <= s.t, FALSE)
                       AND NOT COALESCE(i.marked_uncollectible_at <= s.t, FALSE)
                       AND COALESCE(i.amount_due, 0) > 0
                       AND NOT (i.status = 'paid' AND i.paid_at IS NULL)
                       AND NOT (i.status = 'void' AND i.voided_at IS NULL)
                       AND NOT (i.status = 'uncollectible' AND i.marked_uncollectible_at IS NULL))
      AS open_invoices,
    max({_days("s.t", "COALESCE(i.finalized_at, i.created_at)")})
      FILTER (WHERE NOT COALESCE(i.paid_at <= s.t, FALSE)
                AND NOT COALESCE(i.voided_at <= s.t, FALSE)
                AND NOT COALESCE(i.marked_uncollectible_at <= s.t, FALSE)
                AND COALESCE(i.amount_due, 0) > 0
                AND NOT (i.status = 'paid' AND i.paid_at IS NULL)
                AND NOT (i.status = 'void' AND i.voided_at IS NULL)
                AND NOT (i.status = 'uncollectible' AND i.marked_uncollectible_at IS NULL))
      AS days_invoice_open
  FROM snaps s JOIN inv i ON COALESCE(i.finalized_at, i.created_at) <= s.t
  {links_at_join("i.customer_id", "s.t")}
  GROUP BY ALL
),
-- the card the renewal is charged to as known at t (as the card_expiry signal reads it):
-- the subscription's defaults from its version at t, the customer's from
-- history_customer_defaults, the card's expiry (updated in place) from
-- history_payment_methods
pm AS (
  SELECT s.t, h.payment_method_id,
    CASE WHEN h.card_exp_year IS NOT NULL
         THEN make_timestamp(h.card_exp_year, h.card_exp_month, 1, 0, 0, 0) + INTERVAL 1 MONTH
    END AS good_until
  FROM snaps s JOIN history_payment_methods h
    ON h.valid_from <= s.t AND (h.valid_to IS NULL OR h.valid_to > s.t) AND NOT h.is_deleted
),
cdef AS (
  SELECT s.t, d.customer_id, d.default_payment_method, d.default_source
  FROM snaps s JOIN history_customer_defaults d
    ON d.valid_from <= s.t AND (d.valid_to IS NULL OR d.valid_to > s.t)
),
card AS (
  SELECT s.t, s.account_id,
    min({_days("pm.good_until", "s.renewal_at")})
      AS card_days_after_renewal,
    max(CASE WHEN COALESCE(s.default_payment_method, s.default_source,
                           c.default_payment_method, c.default_source) IS NULL
              AND COALESCE(s.collection_method, 'charge_automatically') = 'charge_automatically'
             THEN 1 ELSE 0 END) AS no_payment_method
  FROM subs s LEFT JOIN cdef c ON c.t = s.t AND c.customer_id = s.customer_id
  LEFT JOIN pm ON pm.t = s.t AND pm.payment_method_id = COALESCE(
    s.default_payment_method, s.default_source, c.default_payment_method, c.default_source)
  GROUP BY ALL
),
-- Salesforce context as known at t: the warehouse keeps each record as last seen with its
-- SystemModstamp (last modified); a record not modified since t held the same values
-- then, one modified after t has a state at t unknown (no field history, no CreatedDate):
-- the owner counts as inactive only when deactivated by t, a contact counts only when
-- unchanged since t, an Opportunity is open at t when unchanged since and still open.
sf_acct AS (
  SELECT s.t, a.account_id,
    CASE WHEN u.is_active = FALSE AND u.system_modstamp <= s.t THEN 1 ELSE 0 END
      AS owner_inactive
  FROM snaps s JOIN core_accounts a ON NOT a.is_deleted
  LEFT JOIN core_users u ON u.user_id = a.owner_id
),
contacts AS (
  SELECT s.t, k.account_id, count(*) AS contacts
  FROM snaps s JOIN core_contacts k ON NOT k.is_deleted AND k.system_modstamp <= s.t
  GROUP BY ALL
),
-- IsClosed and IsWon follow the stage (OpportunityStage holds them per stage value); a
-- record that carries them empty is read from its StageName ('Closed Won', 'Closed Lost')
opp AS (
  SELECT o.account_id, o.close_date, o.system_modstamp,
    COALESCE(o.is_closed, o.stage_name ILIKE 'closed%', FALSE) AS closed,
    COALESCE(o.is_won, o.stage_name ILIKE 'closed won%', FALSE) AS won
  FROM core_opportunities o WHERE NOT o.is_deleted
),
opps AS (
  SELECT s.t, o.account_id,
    count(*) FILTER (WHERE NOT o.closed AND o.system_modstamp <= s.t) AS open_opportunities,
    count(*) FILTER (WHERE o.closed AND NOT o.won
                       AND o.close_date <= s.t AND o.close_date > s.t - INTERVAL 365 DAY)
      AS lost_opportunities_365d
  FROM snaps s JOIN opp o ON TRUE
  GROUP BY ALL
),
later AS (
  SELECT DISTINCT s.t, a.account_id
  FROM snaps s JOIN history_subscriptions h
    ON h.valid_from <= s.t + to_days(CAST($horizon_days AS INTEGER))
   AND (h.valid_to IS NULL OR h.valid_to > s.t + to_days(CAST($horizon_days AS INTEGER)))
  JOIN acct a ON a.t = s.t AND a.customer_id = h.customer_id
  WHERE {sql_in("h.status", IN_FORCE_STATUSES)}
)
SELECT l.account_id, l.t AS snapshot_at, l.known_churn,
  later.account_id IS NULL AS churned,
  CAST(m.m0 AS BIGINT) AS mrr_minor,
  {_days("l.t", "te.first_at")} AS tenure_days,
  l.subscription_count, COALESCE(p.is_annual, 0) AS is_annual, l.is_trialing,
  l.is_unpaid, l.days_to_renewal, COALESCE(d.has_discount, 0) AS has_discount,
  ln(1 + greatest(m.m0, 0) / 100.0) AS log_mrr,
  CASE WHEN m.m30 > 0 THEN (m.m0 - m.m30) / m.m30 END AS mrr_change_30d,
  CASE WHEN m.m90 > 0 THEN (m.m0 - m.m90) / m.m90 END AS mrr_change_90d,
  CASE WHEN m.m180 > 0 THEN (m.m0 - m.m180) / m.m180 END AS mrr_change_180d,
  greatest(greatest(m.m30, m.m90, m.m180) - m.m0, 0) / greatest(m.m30, m.m90, m.m180, 1)
    AS downgrade_180d,
  COALESCE(p.seats, 0) AS seats,
  CASE WHEN st.seats_90 > 0 THEN (COALESCE(p.seats, 0) - st.seats_90) / st.seats_90 END
    AS seat_change_90d,
  CASE WHEN p.seats > 0 THEN u.u0 END AS utilization_30d,
  CASE WHEN p.seats > 0 THEN u.u0 - u.u1 END AS utilization_change_30d,
  CASE WHEN p.seats > 0 THEN u.u0 - u.u2 END AS utilization_change_60d,
  CASE WHEN p.seats > 0 THEN u.u0 - u.u3 END AS utilization_change_90d,
  CASE WHEN u.a0 IS NULL THEN 1 ELSE 0 END AS usage_missing,
  CASE WHEN p.seats > 0 THEN u.a14 / p.seats END AS utilization_14d,
  CASE WHEN p.seats > 0 THEN u.u90 END AS utilization_90d,
  CASE WHEN p.seats > 0 THEN u.u180 END AS utilization_180d,
  CASE WHEN p.seats > 0 THEN u.umin END AS utilization_min_180d,
  CASE WHEN p.seats > 0 THEN u.umax - u.u0 END AS utilization_fall_180d,
  CASE WHEN p.seats > 0 THEN u.u0 - u.u5 END AS utilization_change_180d,
  CASE WHEN p.seats > 0 THEN 30 * u.slope / p.seats END AS utilization_slope_90d,
  COALESCE(o.failed_since_payment, 0) AS failed_since_payment,
  {_days("l.t", "o.streak_from")} AS days_in_failure,
  CASE WHEN o.last_code IN ({_in(HARD)}) THEN 1 ELSE 0 END AS decline_hard,
  CASE WHEN o.last_code IN ({_in(CUSTOMER_ACTION)}) THEN 1 ELSE 0 END
    AS decline_customer_action,
  COALESCE(r.open_invoices, 0) AS open_invoices, r.days_invoice_open,
  COALESCE(r.uncollectible_365d, 0) AS uncollectible_365d,
  COALESCE(py.failures_30d, 0) AS failures_30d, COALESCE(py.failures_90d, 0) AS failures_90d,
  COALESCE(py.failures_180d, 0) AS failures_180d, COALESCE(py.failures_365d, 0) AS failures_365d,
  COALESCE(r.recoveries_180d, 0) AS recoveries_180d,
  COALESCE(r.recoveries_365d, 0) AS recoveries_365d,
  {_days("l.t", "py.last_failed")} AS days_since_failure,
  {_days("l.t", "py.last_paid")} AS days_since_payment,
  c.card_days_after_renewal, COALESCE(c.no_payment_method, 0) AS no_payment_method,
  COALESCE(sf.owner_inactive, 0) AS owner_inactive,
  COALESCE(op.open_opportunities, 0) AS open_opportunities,
  COALESCE(op.lost_opportunities_365d, 0) AS lost_opportunities_365d,
  COALESCE(k.contacts, 0) AS contacts
FROM live l
LEFT JOIN tenure te USING (t, account_id)
LEFT JOIN plan p USING (t, account_id)
LEFT JOIN seats_then st USING (t, account_id)
LEFT JOIN disc d USING (t, account_id)
LEFT JOIN mrr m USING (t, account_id)
LEFT JOIN use_p u USING (t, account_id)
LEFT JOIN pay py USING (t, account_id)
LEFT JOIN invs r USING (t, account_id)
LEFT JOIN streak o USING (t, account_id)
LEFT JOIN card c USING (t, account_id)
LEFT JOIN sf_acct sf USING (t, account_id)
LEFT JOIN contacts k USING (t, account_id)
LEFT JOIN opps op USING (t, account_id)
LEFT JOIN later USING (t, account_id)
ORDER BY l.t, l.account_id
"""


def snapshot_dates(start: datetime, end: datetime, every_days: int) -> list[datetime]:
    """Snapshots every ``every_days`` going back from ``end`` (inclusive) to ``start``."""
    out: list[datetime] = []
    t = end
    while t >= start:
        out.append(t)
        t -= timedelta(days=every_days)
    return sorted(out)


def compute_features(
    tables: Tables,
    snapshots: Sequence[datetime],
    settings: SignalSettings,
    horizon_days: int = 90,
) -> pl.DataFrame:
    """Features for every live account at each snapshot (float32), with the key columns.

    ``churned`` reads ``t + horizon_days``: callers use it only where that is known.
    """
    if not snapshots:
        return empty_frame()
    frame = tables.frame(
        features_sql(settings), {"snaps": list(snapshots), "horizon_days": horizon_days}
    )
    return _typed(frame)


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=_schema())


def _schema() -> dict[str, pl.DataType]:
    return {
        "account_id": pl.String(),
        "snapshot_at": pl.Datetime("us"),
        "known_churn": pl.Boolean(),
        "churned": pl.Boolean(),
        "mrr_minor": pl.Int64(),
        **{n: pl.Float32() for n in FEATURE_NAMES},
    }


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    schema = _schema()
    return frame.select(
        pl.col(n).cast(t, strict=False).fill_nan(None) if t == pl.Float32() else pl.col(n).cast(t)
        for n, t in schema.items()
    ).with_columns(pl.col(n).fill_null(float("nan")) for n in FEATURE_NAMES)
