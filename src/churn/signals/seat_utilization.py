"""Seat utilization: active seats over purchased seats across a trailing window.

Two signals, one module: low use is churn risk (``seat_utilization``, :func:`score`); full
use is an expansion lead, kept apart from risk (``seat_expansion``, :func:`score_expansion`).
Both read the usage feed (``core_usage``: active seats per account on a sample day, keyed
by Salesforce Account Id or Stripe customer id, mapped through the links) against the
seats the account held; :func:`unsupported` names the accounts whose usage cannot support
them, and why. No usage data: no row, never a guess.

**Which items are seats.** A seat is a unit of quantity of a licensed, recurring
subscription item (trialing ones too; metered and one-time prices never) whose price
counts seats:

- a tiered price (it is billed by quantity bands), or
- a per-unit price whose quantity varies: some subscription item known at ``as_of`` holds
  or held it at a quantity other than 1.

A per-unit price only ever held at quantity 1 is a flat fee (a platform fee, a flat plan):
it holds no seats, next to a seat-priced item or alone (an account on a flat plan only has
no seat signal; its usage is counted as ``no_seats`` by :func:`unsupported`). The cost: a
per-seat price every customer so far holds at one seat reads as flat until someone holds
two. Stripe price or product metadata are not in the core tables (``core_prices`` has no
``metadata``), so no ``metadata.seat`` flag is read; adding one is a normalise change.

**Seats per sample.** Each usage sample is divided by the seats held at the end of its
day (or at ``as_of``, if earlier), from the subscription history's validity intervals:
seats bought yesterday do not dilute the days before. **After a contraction** (seats cut
from 7 to 1) low use reads only the samples from the latest contraction on (the sample
point, or ``as_of``, that first holds fewer seats than the point before): the days before
measured seats the customer no longer holds, and cutting them was its answer to that low
use, so they would keep the signal firing until they left the window. Too few samples
since the cut: no low-use row until they accrue. Full use (expansion) reads every sample
in the window. The account must hold seats at
``as_of`` for either signal. Expansion compares each sample with the larger of that day's
seats and today's: seats bought since are room already sold.

**Any cadence.** The feed may be daily, weekly, monthly or irregular, per account:

- cadence: the median gap in days (rounded up) between the account's consecutive samples
  in the last ``seat_max_window_days``; with a single sample, none (1 day);
- window: ``(as_of - window_days, as_of]``, ``window_days = seat_window_days`` stretched
  to ``seat_min_samples x cadence`` for a sparse feed (monthly: a sample in each of the
  last two months, a 60-day window) but never past ``seat_max_window_days``;
- a sample stands for active seats from its day until the next sample, at most one
  cadence step, the latest one through ``as_of`` ("a sample covers the period until the
  next"): a monthly figure is best dated on the first day of its month. Use is the mean of
  the samples' utilizations weighted by the days each covers;
- sufficiency by coverage: at least ``seat_min_samples`` samples whose days cover at least
  ``seat_min_days`` days of the window.

A daily feed is the case where every row covers its own day: the coverage is the number
of daily rows and the weights are equal, which is the rule before cadences (seven daily
rows in the 30-day window, an average over them).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.facts import MRR_STATUSES, sql_in
from churn.signals.mrr import account_key
from churn.signals.schema import finish
from churn.signals.tables import Tables

NAME = "seat_utilization"
EXPANSION = "seat_expansion"

#: Why an account's usage supports no seat signal (:func:`unsupported`'s ``code``).
UNKNOWN_KEY = "unknown_key"
NO_SEATS = "no_seats"
TOO_FEW_SAMPLES = "too_few_samples"
TOO_LITTLE_COVERAGE = "too_little_coverage"

# The weighted mean of ``util`` is summed in decimals and rounded to 9 places: a float
# sum's last digits follow the order DuckDB's threads finish in, and use of exactly half
# the seats (1/3, 2/3, 2/3, 1/3 of 3) came out 0.49999999999999994 on one run and 0.5 on
# the next: a "50% used" signal at a score of 1e-16 that came and went with no data (and
# with it the account's top reason); at 100,000 accounts 10 such accounts, 4 others after
# the decimal sum alone (its per-sample rounding, 1e-13).
_AGG = """
  SELECT account_id, any_value(seats_now) AS seats, count(*) AS samples,
    sum(covers) AS days, any_value(cadence) AS cadence, any_value(window_days) AS window_days,
    round(sum(CAST(util AS DECIMAL(18, 12)) * covers) / sum(covers), 9) AS util, min(util_vs_now) AS min_util,
    sum(active * covers) / sum(covers) AS avg_active, min(active) AS min_active,
    min(seats) AS min_seats, max(seats) AS max_seats"""

_ACCOUNTS = f"""
WITH seat_prices AS (
  SELECT p.price_id FROM core_prices p
  WHERE COALESCE(p.usage_type, 'licensed') = 'licensed'
    AND COALESCE(p.type, 'recurring') = 'recurring'
    AND (p.billing_scheme = 'tiered' OR p.price_id IN (
      SELECT price_id FROM history_subscription_items
      WHERE valid_from <= $as_of AND COALESCE(quantity, 1) <> 1))
),
-- seat item versions while their subscription version holds them (a canceled one until
-- its ended_at, as in the MRR engine), per account
held AS (
  SELECT {account_key("h.customer_id")} AS account_id,
    greatest(h.valid_from, i.valid_from) AS held_from,
    least(COALESCE(h.valid_to, 'infinity'::TIMESTAMP), COALESCE(i.valid_to, 'infinity'::TIMESTAMP),
          CASE WHEN h.status = 'canceled'
               THEN COALESCE(h.ended_at, '-infinity'::TIMESTAMP) END) AS held_to,
    COALESCE(i.quantity, 1) AS quantity
  FROM history_subscriptions h
  JOIN history_subscription_items i ON i.subscription_id = h.subscription_id
  JOIN seat_prices p ON p.price_id = i.price_id
  LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = h.customer_id
  WHERE ({sql_in("h.status", MRR_STATUSES)} OR h.status = 'canceled')
    AND h.valid_from <= $as_of AND i.valid_from <= $as_of
),
usage AS (
  SELECT {account_key("u.account_id")} AS account_id, u.day, sum(u.active_seats) AS active
  -- the feed as known at as_of (restatements loaded later not read into the past)
  FROM core_usage_as_of($as_of, CAST($as_of AS DATE) - CAST($max_window AS INTEGER)) u
  LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = u.account_id
  WHERE u.day > CAST($as_of AS DATE) - CAST($max_window AS INTEGER) AND u.day <= CAST($as_of AS DATE)
  GROUP BY ALL
),
cadence AS (
  SELECT account_id, CAST(ceil(median(gap)) AS BIGINT) AS cadence
  FROM (SELECT account_id, day - lag(day) OVER (PARTITION BY account_id ORDER BY day) AS gap
        FROM usage)
  GROUP BY account_id
),
fit AS (
  SELECT account_id, cadence,
    least($max_window, greatest($window, $min_samples * COALESCE(cadence, 1))) AS window_days
  FROM cadence
),
samples AS (
  SELECT u.account_id, u.day, u.active, f.cadence, f.window_days,
    least(COALESCE(lead(u.day) OVER w, CAST($as_of AS DATE) + 1) - u.day,
          COALESCE(f.cadence, 1)) AS covers,
    least(CAST(u.day AS TIMESTAMP) + INTERVAL 1 DAY - INTERVAL 1 MICROSECOND,
          CAST($as_of AS TIMESTAMP)) AS t
  FROM usage u JOIN fit f USING (account_id)
  WHERE u.day > CAST($as_of AS DATE) - CAST(f.window_days AS INTEGER)
  WINDOW w AS (PARTITION BY u.account_id ORDER BY u.day)
),
points AS (
  SELECT account_id, t FROM samples
  UNION SELECT account_id, CAST($as_of AS TIMESTAMP) FROM fit
),
seats_at AS (
  SELECT pt.account_id, pt.t, sum(h.quantity) AS seats
  FROM points pt
  JOIN held h ON h.account_id = pt.account_id AND h.held_from <= pt.t AND h.held_to > pt.t
  GROUP BY ALL
),
now_seats AS (
  SELECT account_id, seats FROM seats_at WHERE t = CAST($as_of AS TIMESTAMP) AND seats > 0
),
-- the latest contraction: a point (sample or as_of) holding fewer seats than the one before
cut AS (
  SELECT account_id, max(t) AS cut_at
  FROM (SELECT account_id, t, seats < lag(seats) OVER (PARTITION BY account_id ORDER BY t) AS fell
        FROM seats_at)
  WHERE fell GROUP BY account_id
),
per_sample AS (
  SELECT s.*, d.seats, n.seats AS seats_now, s.active / d.seats AS util,
         s.active / greatest(d.seats, n.seats) AS util_vs_now,
         s.t >= COALESCE(c.cut_at, '-infinity'::TIMESTAMP) AS since_cut
  FROM samples s
  JOIN seats_at d ON d.account_id = s.account_id AND d.t = s.t
  JOIN now_seats n ON n.account_id = s.account_id
  LEFT JOIN cut c ON c.account_id = s.account_id
  WHERE d.seats > 0
),
agg AS ({_AGG} FROM per_sample GROUP BY account_id),
r AS (SELECT * FROM agg WHERE samples >= $min_samples AND days >= $min_days),
-- low use: the samples from the latest contraction on
agg_low AS ({_AGG} FROM per_sample WHERE since_cut GROUP BY account_id),
r_low AS (SELECT * FROM agg_low WHERE samples >= $min_samples AND days >= $min_days)
"""

# ", from 2 samples, one every 31 days" for a feed sparser than daily; nothing for daily.
_SPARSE = (
    "CASE WHEN cadence > 1 THEN ', from ' || samples || ' samples, one every '"
    " || cadence || ' days' ELSE '' END"
)

_LOW_ROWS = f"""
SELECT account_id,
  1.0 - util / $low AS score,
  'Only ' || CAST(round(100 * util) AS BIGINT) || '% of '
    || CASE WHEN min_seats = max_seats AND max_seats = seats THEN seats || ' purchased seats'
            WHEN min_seats = max_seats
              THEN 'purchased seats (' || min_seats || ' then, ' || seats || ' now)'
            ELSE 'purchased seats (' || min_seats || ' to ' || max_seats || ' over the window, '
              || seats || ' now)' END
    || ' were used on average over the last ' || days || ' days' || {_SPARSE} || '.' AS reason,
  json_object('purchased_seats', seats, 'avg_active_seats', round(avg_active, 2),
    'utilization', round(util, 4), 'days_with_data', days, 'samples', samples,
    'cadence_days', COALESCE(cadence, 1), 'window_days', window_days,
    'min_seats', min_seats, 'max_seats', max_seats)::VARCHAR AS evidence,
  'seat_utilization:' || account_id AS episode_key
FROM r_low WHERE util < $low
"""

_EXPANSION_ROWS = """
SELECT account_id, least(1.0, min_util) AS score,
  'All ' || seats || ' purchased seats are in use: at least '
    || CAST(floor(100 * min_util) AS BIGINT) || '% '
    || CASE WHEN cadence > 1
            THEN 'in every sample (' || samples || ' samples over ' || days
              || ' days, one every ' || cadence || ' days)'
            ELSE 'every day for ' || days || ' days' END
    || '; room to expand.' AS reason,
  json_object('purchased_seats', seats, 'min_active_seats', min_active,
    'utilization', round(min_util, 4), 'days_with_data', days, 'samples', samples,
    'cadence_days', COALESCE(cadence, 1), 'window_days', window_days)::VARCHAR AS evidence,
  'seat_expansion:' || account_id AS episode_key
FROM r WHERE min_util >= $high
"""

_KNOWN = f"""
, known AS (
  SELECT {account_key("h.customer_id")} AS account_id FROM history_subscriptions h
  LEFT JOIN account_links_as_of($as_of) l ON l.customer_id = h.customer_id
  UNION SELECT customer_id FROM core_customers
  UNION SELECT account_id FROM account_links_as_of($as_of)
)"""

_GAP_ROWS = f"""
SELECT f.account_id,
  CASE WHEN n.account_id IS NULL AND k.account_id IS NULL THEN '{UNKNOWN_KEY}'
       WHEN n.account_id IS NULL THEN '{NO_SEATS}'
       WHEN COALESCE(a.samples, 0) < $min_samples THEN '{TOO_FEW_SAMPLES}'
       ELSE '{TOO_LITTLE_COVERAGE}' END AS code,
  COALESCE(a.samples, 0) AS samples, COALESCE(a.days, 0) AS days,
  f.cadence AS cadence_days, f.window_days
FROM fit f
LEFT JOIN agg a USING (account_id)
LEFT JOIN now_seats n USING (account_id)
LEFT JOIN (SELECT DISTINCT account_id FROM known) k USING (account_id)
WHERE n.account_id IS NULL OR a.account_id IS NULL
   OR a.samples < $min_samples OR a.days < $min_days
"""

#: Both signals' rows and the usage the signals cannot use, from one pass over the usage
#: and the seats (``kind``: ``low``, ``expansion`` or ``gap``; a signal's rows have the
#: gap columns null and the reverse).
_ALL = f"""{_ACCOUNTS}{_KNOWN}
SELECT 'low' AS kind, * FROM ({_LOW_ROWS})
UNION ALL BY NAME
SELECT 'expansion' AS kind, * FROM ({_EXPANSION_ROWS})
UNION ALL BY NAME
SELECT 'gap' AS kind, * FROM ({_GAP_ROWS})
"""

#: Each kind's own statement (what :data:`_ALL` must give each kind: the tests).
_LOW = _ACCOUNTS + _LOW_ROWS
_EXPANSION = _ACCOUNTS + _EXPANSION_ROWS
_UNSUPPORTED = _ACCOUNTS + _KNOWN + _GAP_ROWS

_SIGNAL_COLUMNS = ("account_id", "score", "reason", "evidence", "episode_key")
_GAP_COLUMNS = ("account_id", "code", "samples", "days", "cadence_days", "window_days")


def _params(as_of: datetime, settings: SignalSettings, *extra: str) -> dict[str, object]:
    params: dict[str, object] = {
        "as_of": as_of,
        "window": settings.seat_window_days,
        "max_window": max(settings.seat_max_window_days, settings.seat_window_days),
        "min_samples": settings.seat_min_samples,
        "min_days": settings.seat_min_days,
    }
    more = {"low": settings.seat_low_utilization, "high": settings.seat_expansion_utilization}
    return params | {k: more[k] for k in extra}


def _all(tables: Tables, as_of: datetime, settings: SignalSettings, kind: str) -> pl.DataFrame:
    """One kind's rows of :data:`_ALL`, read once per score: the usage, the seats at every
    sample and the per-sample utilization are the same for both signals and the gaps
    (measured at 1,000,000 accounts: 9.4 s for the signals' read, 7.8 s more for the
    gaps' own)."""
    params = _params(as_of, settings, "low", "high")
    rows = tables.once(("seats", *sorted(params.items())), lambda: tables.frame(_ALL, params))
    columns = _GAP_COLUMNS if kind == "gap" else _SIGNAL_COLUMNS
    return rows.filter(pl.col("kind") == kind).select(columns)


def score(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """Low seat use (churn risk): mean utilization below ``seat_low_utilization``."""
    return finish(_all(tables, as_of, settings, "low"), NAME, as_of)


def score_expansion(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """Every sample at or above ``seat_expansion_utilization`` (an expansion lead, info)."""
    return finish(_all(tables, as_of, settings, "expansion"), EXPANSION, as_of, info=True)


def unsupported(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """Accounts with usage in the last ``seat_max_window_days`` that no seat signal can use.

    One row per account: ``code`` (:data:`UNKNOWN_KEY`: the key is neither a Stripe
    customer nor a linked Account; :data:`NO_SEATS`: no seat held at ``as_of``;
    :data:`TOO_FEW_SAMPLES`; :data:`TOO_LITTLE_COVERAGE`), and the ``samples``, ``days``
    covered, ``cadence_days`` (null: a single sample) and ``window_days`` behind it.
    :func:`describe` words it.
    """
    return _all(tables, as_of, settings, "gap")


def describe(row: dict[str, object], settings: SignalSettings) -> str:
    """One account's reason, free of identifiers, e.g. for a run's notes."""
    code, window, cadence = row["code"], row["window_days"], row["cadence_days"]
    if cadence is None:
        lookback = max(settings.seat_max_window_days, settings.seat_window_days)
        every = f" (and no other in the last {lookback} days)"
    else:
        every = f" (one every {cadence} days)" if int(str(cadence)) > 1 else ""
    if code == UNKNOWN_KEY:
        return "usage keyed by an id that is neither a Stripe customer nor a linked Account"
    if code == NO_SEATS:
        return "usage for an account holding no licensed seats at as_of"
    if code == TOO_FEW_SAMPLES:
        n = int(str(row["samples"]))
        if n == 0:
            return (
                f"no usage sample in the {window}-day window, only older ones;"
                f" seat signals need {settings.seat_min_samples}"
            )
        return (
            f"{n} usage sample{'' if n == 1 else 's'} in the {window}-day window{every};"
            f" seat signals need {settings.seat_min_samples}"
        )
    return (
        f"usage samples cover {row['days']} days of the {window}-day window{every};"
        f" seat signals need {settings.seat_min_days}"
    )
