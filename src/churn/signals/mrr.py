"""The MRR engine: monthly-normalised recurring revenue from subscription history.

Rules (all integer minor units, rounding half away from zero once per item and once per
subscription discount):

- an item's period amount: per-unit ``unit_amount x quantity`` (after ``transform_quantity``);
  tiered ``volume``: the whole quantity at the tier it falls in, plus that tier's flat fee;
  tiered ``graduated``: each tier's slice at its own price, plus each reached tier's flat fee;
  a sub-cent price (``unit_amount`` null, ``unit_amount_decimal`` set; a tier's
  ``unit_amount_decimal``/``flat_amount_decimal``) is read exactly, in 10**-12 minor units,
  and rounded once with the rest. Stripe includes a price's ``tiers`` only when expanded
  (the extract lists prices with ``expand=data.tiers``); a tiered price whose tiers are
  still unknown (an object seen only embedded or by event) counts zero. Not supported:
  ``custom_unit_amount`` (pay what you want) prices. An item whose price the extract
  quarantined (an amount that is not an integer, an unknown interval, tiers without
  amounts) has unknown MRR: NULL, not 0, and so has its subscription and its account's
  MRR in that currency (movements leave such an account out, as with a missing rate);
- normalised to a month: month / interval_count; year / (12 x count);
  week x 52 / (12 x count); day x 365 / (12 x count);
- zero for trials (status ``trialing``), metered prices and one-time prices, and while
  collection is paused (``pause_collection`` set, until its ``resumes_at``): Stripe keeps
  the subscription ``active`` and its seats, but collects nothing, so its MRR is not billable
  (a pause is a contraction, or churn if it was all the account's MRR, in the movements; its
  end an expansion or reactivation). Status ``paused`` (a trial that ended without a payment
  method; no invoices) carries none either;
- net of tax: an exclusive price is net already; an inclusive one (``tax_behavior =
  inclusive``) is scaled by ``taxable / (taxable + tax)`` of the subscription's latest
  invoice known at ``t`` (created by then, not draft or void) whose lines bore inclusive
  tax (``core_invoices.inclusive_tax``/``inclusive_taxable``); before such an invoice, its
  tax is unknown and the price counts whole;
- counted while the subscription is ``active`` or ``past_due`` (``trialing`` appears with
  zero MRR, so its seats are known); a ``canceled`` one carries none from its ``ended_at``
  ("the date the subscription ended", Stripe): a cancellation at period end stays
  ``active`` with ``cancel_at_period_end`` until then and ends at the period end, while an
  immediate one (by the API, or by dunning once retries are exhausted,
  ``cancellation_details.reason = payment_failed``) ends when it is made, mid-period;
- discounts: ``forever`` lowers MRR; ``once`` and ``repeating`` only with
  ``count_temporary_discounts`` and while they run; percent first, then amount off
  (normalised by the subscription's interval), never below zero.

The SQL takes a ``points`` query (one column ``t``): MRR is computed at every point at
once, which is how movements get month ends for all accounts in one statement.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # settings take their defaults from the signal registry
    from churn.settings import SignalSettings

from churn.signals.facts import MRR_STATUSES
from churn.signals.money import sql_convert_by, sql_convert_factors, sql_round_div
from churn.signals.rates import rates_at_sql
from churn.signals.tables import Tables

ACCOUNT_KEY = "COALESCE(l.account_id, {cust})"

#: The links a score as of ``$as_of`` reads: each customer's link in force at ``as_of`` as
#: known then (migration 076's macro over ``history_account_links``), never today's
#: ``core_account_links``. Every instant a score reads (the MRR points of its movements,
#: the start of the downgrade window) is keyed by these same links: an account is the
#: customers linked to it as of T, so a relink is neither churn at one Account nor new MRR
#: at another, and a warehouse extracted at T (which knows only the links in force then)
#: keys the past the same way.
LINKS_AS_OF = "account_links_as_of($as_of)"


def account_key(customer_column: str) -> str:
    """SQL for the marts' account key: linked Salesforce Account Id, else customer id.

    Needs ``l``: :func:`links_join` (links as of ``$as_of``) or :func:`links_at_join`.
    """
    return ACCOUNT_KEY.format(cust=customer_column)


def links_join(customer_column: str) -> str:
    """SQL: ``LEFT JOIN`` of ``customer_column``'s link in force at ``$as_of`` as ``l``."""
    return f"LEFT JOIN {LINKS_AS_OF} l ON l.customer_id = {customer_column}"


def links_at_join(customer_column: str, instant: str) -> str:
    """SQL: ``LEFT JOIN`` of ``customer_column``'s link in force at ``instant`` (a column:
    one instant per row, e.g. a model snapshot) as ``l``, from ``account_link_versions``."""
    return (
        f"LEFT JOIN account_link_versions l ON l.customer_id = {customer_column}"
        f" AND l.in_force_from <= {instant} AND (l.valid_to IS NULL OR l.valid_to > {instant})"
    )


def customers_of(accounts: str, links: str = "history_account_links") -> str:
    """SQL rows ``(customer_id)``: the customers whose rows an account's score can read,
    for the accounts of the query ``accounts`` (one column of ids): every customer ever
    linked to one of them (any version of ``links``: a score keys each instant by the
    links of that instant) and the ids that are customer ids themselves (an unlinked
    customer is its own account). Scoped scoring and the incremental push's timeline
    take their scope so."""
    return (
        f"SELECT DISTINCT customer_id FROM {links} WHERE account_id IN ({accounts})"
        f" UNION SELECT * FROM ({accounts})"
    )


#: Period amounts are carried in 10**-12 minor units: Stripe's decimal amounts have at
#: most 12 decimal places, so a sub-cent price is exact until MRR's one rounding.
DECIMAL_SCALE = 10**12


def _scaled(integer: str, decimal: str) -> str:
    """SQL: an amount in 10**-12 minor units from its integer field, else its decimal string."""
    return (
        f"COALESCE(CAST({integer} AS HUGEINT) * {DECIMAL_SCALE}, "
        f"CAST(TRY_CAST({decimal} AS DECIMAL(38, 12)) * {DECIMAL_SCALE} AS HUGEINT))"
    )


def _tier_scaled(field: str) -> str:
    """SQL: a tier's ``field`` (or ``field_decimal``) of row ``i`` in 10**-12 minor units."""
    return _scaled(
        f"TRY_CAST(json_extract_string(tiers, '$[' || i || '].{field}') AS BIGINT)",
        f"json_extract_string(tiers, '$[' || i || '].{field}_decimal')",
    )


def item_mrr_sql(points: str, settings: SignalSettings, *, per_subscription: bool = False) -> str:
    """Per subscription item at each point ``t``: its monthly MRR in minor units.

    ``per_subscription``: the points query has a ``subscription_id`` column too, and each
    point is taken for that subscription only (the instants around its own changes).
    """
    own = "AND h.subscription_id = pts.subscription_id" if per_subscription else ""
    live = ", ".join(f"'{s}'" for s in MRR_STATUSES)
    # the period amount in 10**-12 minor units (sub-cent decimal amounts are exact)
    period_amount = f"""
        CASE
          WHEN p.billing_scheme = 'tiered' AND p.tiers_mode = 'volume'
            THEN COALESCE(ta.volume_amount, 0)
          WHEN p.billing_scheme = 'tiered' THEN COALESCE(ta.graduated_amount, 0)
          ELSE COALESCE({_scaled("p.unit_amount", "p.unit_amount_decimal")}, 0) * it.q
        END"""
    # an inclusive price's share net of tax: taxable / (taxable + inclusive tax)
    inclusive = "p.tax_behavior = 'inclusive' AND tx.taxable > 0"
    return f"""
    WITH pts AS ({points}),
    tier_rows AS (
      SELECT price_id, i AS idx,
        TRY_CAST(json_extract_string(tiers, '$[' || i || '].up_to') AS BIGINT) AS up_to,
        COALESCE({_tier_scaled("unit_amount")}, 0) AS unit_amount,
        COALESCE({_tier_scaled("flat_amount")}, 0) AS flat_amount
      FROM (SELECT price_id, tiers, UNNEST(range(CAST(json_array_length(tiers) AS BIGINT))) AS i
            FROM core_prices WHERE billing_scheme = 'tiered' AND tiers IS NOT NULL)
    ),
    tier_bounds AS (
      SELECT *, COALESCE(lag(up_to) OVER (PARTITION BY price_id ORDER BY idx), 0) AS lower
      FROM tier_rows
    ),
    subs AS (
      SELECT pts.t, h.subscription_id, h.customer_id, h.status, h.currency,
             h.current_period_end, h.cancel_at_period_end, h.cancel_at,
             -- collection paused (until resumes_at): no billable MRR
             COALESCE(h.pause_behavior IS NOT NULL
                      AND (h.pause_resumes_at IS NULL OR h.pause_resumes_at > pts.t), FALSE)
               AS paused
      FROM pts JOIN history_subscriptions h
        ON h.valid_from <= pts.t AND (h.valid_to IS NULL OR h.valid_to > pts.t) {own}
      WHERE h.status IN ({live})
         OR (h.status = 'canceled' AND h.ended_at > pts.t)
    ),
    -- prices the extract quarantined (bad input): an item at one has unknown MRR (NULL)
    quarantined_prices AS (
      SELECT DISTINCT object_id AS price_id FROM quarantine
      WHERE source = 'stripe' AND stream = 'price'
    ),
    it AS (
      SELECT s.t, s.subscription_id, s.customer_id, s.status, s.paused, i.item_id, i.price_id,
             s.currency AS sub_currency, p.price_id IS NULL AS price_quarantined,
             COALESCE(i.quantity, 1) AS quantity,
             CASE WHEN COALESCE(p.transform_divide_by, 0) > 0 THEN
                    CASE WHEN p.transform_round = 'up'
                         THEN (COALESCE(i.quantity, 1) + p.transform_divide_by - 1)
                              // p.transform_divide_by
                         ELSE COALESCE(i.quantity, 1) // p.transform_divide_by END
                  ELSE COALESCE(i.quantity, 1) END AS q
      FROM subs s
      JOIN history_subscription_items i
        ON i.subscription_id = s.subscription_id
       AND i.valid_from <= s.t AND (i.valid_to IS NULL OR i.valid_to > s.t)
      LEFT JOIN core_prices p ON p.price_id = i.price_id
      LEFT JOIN quarantined_prices qp ON qp.price_id = i.price_id
      WHERE p.price_id IS NOT NULL OR qp.price_id IS NOT NULL
    ),
    -- each (tiered price, quantity) priced once, joined back: no per-row subquery
    tq AS (
      SELECT DISTINCT it.price_id, it.q FROM it
      JOIN core_prices p ON p.price_id = it.price_id AND p.billing_scheme = 'tiered'
    ),
    tier_amount AS (
      SELECT tq.price_id, tq.q,
        max(CASE WHEN tq.q > tb.lower AND (tb.up_to IS NULL OR tq.q <= tb.up_to)
                 THEN tb.unit_amount * tq.q + tb.flat_amount END) AS volume_amount,
        sum(CASE WHEN tq.q > tb.lower
                 THEN (least(tq.q, COALESCE(tb.up_to, tq.q)) - tb.lower) * tb.unit_amount
                      + tb.flat_amount END) AS graduated_amount
      FROM tq JOIN tier_bounds tb ON tb.price_id = tq.price_id
      GROUP BY ALL
    ),
    -- per subscription and point: its latest invoice known then that bore inclusive tax
    tx AS (
      SELECT s.t, s.subscription_id,
             arg_max(i.inclusive_taxable, (i.created_at, i.invoice_id)) AS taxable,
             arg_max(i.inclusive_tax, (i.created_at, i.invoice_id)) AS tax
      FROM subs s JOIN core_invoices i
        ON i.subscription_id = s.subscription_id AND i.created_at <= s.t
      WHERE i.inclusive_taxable > 0 AND COALESCE(i.status, '') NOT IN ('draft', 'void')
        AND NOT COALESCE(i.is_deleted, FALSE)
      GROUP BY ALL
    )
    SELECT it.t, it.subscription_id, it.customer_id, it.item_id, it.price_id, it.quantity,
           lower(COALESCE(p.currency, it.sub_currency)) AS currency, p.usage_type,
           p.recurring_interval AS interval, COALESCE(p.recurring_interval_count, 1) AS interval_count,
           CASE
             WHEN it.status = 'trialing' OR it.paused THEN CAST(0 AS BIGINT)
             WHEN it.price_quarantined THEN CAST(NULL AS BIGINT)
             WHEN p.usage_type = 'metered'
                  OR COALESCE(p.type, 'recurring') <> 'recurring' THEN CAST(0 AS BIGINT)
             ELSE CAST({
        sql_round_div(
            f"({period_amount}) * CASE p.recurring_interval WHEN 'week' THEN 52 "
            f"WHEN 'day' THEN 365 ELSE 1 END * CASE WHEN {inclusive} THEN tx.taxable ELSE 1 END",
            f"{DECIMAL_SCALE} * CASE p.recurring_interval WHEN 'month' THEN 1 ELSE 12 END"
            " * COALESCE(p.recurring_interval_count, 1)"
            f" * CASE WHEN {inclusive} THEN tx.taxable + tx.tax ELSE 1 END",
        )
    } AS BIGINT)
           END AS mrr_minor
    FROM it LEFT JOIN core_prices p ON p.price_id = it.price_id
    LEFT JOIN tier_amount ta ON ta.price_id = it.price_id AND ta.q = it.q
    LEFT JOIN tx ON tx.t = it.t AND tx.subscription_id = it.subscription_id
    """


def subscription_mrr_sql(
    points: str,
    settings: SignalSettings,
    *,
    per_subscription: bool = False,
    by_customer: bool = False,
    items: str | None = None,
) -> str:
    """Per subscription at each point ``t``: gross MRR, discount and MRR, with account key.

    The account key is the customer's link as of ``$as_of`` (:data:`LINKS_AS_OF`) at every
    point; ``by_customer``: the customer id instead, for a caller that keys each point
    itself (the model's snapshots, no ``$as_of``). ``items``: SQL of the items' rows at
    these points when the caller has them already (a CTE of :func:`item_mrr_sql` over the
    same ``points``, computed once for several readers), else they are computed here.
    """
    link = "" if by_customer else links_join("n.customer_id")
    key = "n.customer_id" if by_customer else account_key("n.customer_id")
    temporary = "TRUE" if settings.count_temporary_discounts else "FALSE"
    items = items or item_mrr_sql(points, settings, per_subscription=per_subscription)
    return f"""
    WITH items AS ({items}),
    per_sub AS (
      SELECT t, subscription_id, customer_id, min(currency) AS currency,
             -- one item of unknown MRR (a quarantined price) makes the whole unknown
             CASE WHEN bool_or(mrr_minor IS NULL) THEN NULL ELSE sum(mrr_minor) END AS gross,
             -- the interval used to spread an amount-off coupon over a month
             min(interval) AS interval, min(interval_count) AS interval_count
      FROM items GROUP BY ALL
    ),
    disc AS (
      SELECT ps.t, ps.subscription_id,
        least(sum(CAST(COALESCE(d.percent_off, 0) * 10000 AS BIGINT)), 1000000) AS pct_units,
        sum(CASE WHEN lower(COALESCE(d.currency, ps.currency)) = ps.currency
                 THEN COALESCE(d.amount_off, 0) ELSE 0 END) AS amount_off
      FROM per_sub ps JOIN core_subscription_discounts d ON d.subscription_id = ps.subscription_id
      WHERE (d.starts_at IS NULL OR d.starts_at <= ps.t)
        AND (d.ends_at IS NULL OR d.ends_at > ps.t)
        AND (d.duration = 'forever' OR (d.duration IN ('once', 'repeating') AND {temporary}))
      GROUP BY ALL
    ),
    -- without a discount the rounding divisions are identities: skipped (most rows)
    net AS (
      SELECT ps.*,
        CASE WHEN COALESCE(d.pct_units, 0) = 0 THEN ps.gross ELSE
        {sql_round_div("ps.gross * (1000000 - d.pct_units)", "1000000")} END
          AS after_pct,
        CASE WHEN COALESCE(d.amount_off, 0) = 0 THEN 0 ELSE {
        sql_round_div(
            "d.amount_off * CASE ps.interval WHEN 'week' THEN 52 WHEN 'day' THEN 365 ELSE 1 END",
            "CASE ps.interval WHEN 'month' THEN 1 ELSE 12 END * COALESCE(ps.interval_count, 1)",
        )
    } END AS monthly_amount_off
      FROM per_sub ps LEFT JOIN disc d USING (t, subscription_id)
    )
    SELECT n.t, n.subscription_id, n.customer_id, {key} AS account_id,
           n.currency, CAST(n.gross AS BIGINT) AS gross_mrr_minor,
           CASE WHEN n.gross IS NOT NULL THEN
             CAST(greatest(n.after_pct - n.monthly_amount_off, 0) AS BIGINT) END AS mrr_minor
    FROM net n {link}
    """


def _configured_rates(settings: SignalSettings) -> str:
    """The settings' fallback rates as a VALUES list (validated Decimals, upper-case codes)."""
    rows = [
        f"('{code.upper()}', CAST('{rate}' AS DECIMAL(18, 9)))"
        for code, rate in sorted(settings.currency_rates.items())
        if code.isalpha()
    ]
    if not rows:
        return "SELECT CAST(NULL AS VARCHAR), CAST(NULL AS DECIMAL(18, 9)) WHERE FALSE"
    return "VALUES " + ", ".join(rows)


def account_mrr_sql(
    points: str, settings: SignalSettings, *, by_customer: bool = False, items: str | None = None
) -> str:
    """Per account and original currency at each ``t``: MRR and its reporting value.

    Converted at the rates as they stood at ``t`` (:func:`churn.signals.rates.rates_at_sql`:
    dated conversion rates, else CurrencyType as seen by then, else today's), then the
    settings' ``currency_rates`` for a currency with none. ``by_customer``: keyed by
    customer id; ``items``: the items' rows already computed (see
    :func:`subscription_mrr_sql`).
    """
    rep = settings.reporting_currency.upper()
    subs = subscription_mrr_sql(points, settings, by_customer=by_customer, items=items)
    num, den = sql_convert_factors(
        "c.currency", f"'{rep}'", "src.conversion_rate", "tgt.conversion_rate"
    )
    return f"""
    WITH subs AS ({subs}),
    acc AS (
      SELECT t, account_id, currency,
             CASE WHEN NOT bool_or(mrr_minor IS NULL) THEN CAST(sum(mrr_minor) AS BIGINT) END
               AS mrr_minor,
             count(*) AS subscription_count
      FROM subs GROUP BY ALL
    ),
    known_rates AS ({rates_at_sql(points)}),
    rates AS (
      SELECT t, iso, conversion_rate FROM known_rates
      UNION ALL
      SELECT p.t, c.iso, c.conversion_rate
      FROM (SELECT DISTINCT t FROM acc) p
      CROSS JOIN ({_configured_rates(settings)}) c(iso, conversion_rate)
      ANTI JOIN known_rates k ON k.t = p.t AND k.iso = c.iso
    ),
    -- the rates and conversion factors once per point and currency, not per account
    conv AS (
      SELECT c.t, c.currency,
             CASE WHEN upper(c.currency) = '{rep}' THEN CAST(1 AS DECIMAL(18, 9))
                  ELSE src.conversion_rate END AS source_rate,
             CASE WHEN upper(c.currency) = '{rep}' THEN CAST(1 AS DECIMAL(18, 9))
                  ELSE tgt.conversion_rate END AS reporting_rate,
             upper(c.currency) = '{rep}' AS same, {num} AS num, {den} AS den
      FROM (SELECT DISTINCT t, currency FROM acc) c
      LEFT JOIN rates src ON src.t = c.t AND src.iso = upper(c.currency)
      LEFT JOIN rates tgt ON tgt.t = c.t AND tgt.iso = '{rep}'
    )
    SELECT acc.t, acc.account_id, acc.currency, acc.mrr_minor, acc.subscription_count,
           '{rep}' AS reporting_currency, cv.source_rate, cv.reporting_rate,
           CASE WHEN cv.same THEN acc.mrr_minor
                ELSE {sql_convert_by("acc.mrr_minor", "cv.num", "cv.den")} END
             AS reporting_mrr_minor
    FROM acc JOIN conv cv ON cv.t = acc.t AND cv.currency IS NOT DISTINCT FROM acc.currency
    """


#: A points query of the single instant bound as ``$as_of`` (never formatted into SQL).
AS_OF_POINT = "SELECT CAST($as_of AS TIMESTAMP) AS t"


def account_mrr(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """MRR per account and original currency at ``as_of`` (see :func:`account_mrr_sql`)."""
    return tables.frame(account_mrr_sql(AS_OF_POINT, settings), {"as_of": as_of})


def subscription_mrr(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """MRR per subscription at ``as_of``."""
    return tables.frame(subscription_mrr_sql(AS_OF_POINT, settings), {"as_of": as_of})


MOVEMENT_SCHEMA: dict[str, pl.DataType] = {
    "account_id": pl.String(),
    "month": pl.Date(),
    "movement": pl.String(),
    "start_mrr_minor": pl.Int64(),
    "end_mrr_minor": pl.Int64(),
    "amount_minor": pl.Int64(),
}


def classify_movements(series: pl.DataFrame) -> pl.DataFrame:
    """Movements from MRR at consecutive month boundaries, one row per changed account-month.

    ``series``: account_id, month (Date), start_mrr_minor, end_mrr_minor (Int64; start of a
    month equals the end of the previous one). ``amount_minor = end - start``, so the
    movements of an account sum to its change in MRR. A month starting at zero is ``new``
    when the account never had MRR before, else ``reactivation``; ending at zero is
    ``churn``; otherwise ``expansion`` or ``contraction``.
    """
    # the previous row's end in its own step: a window over a window (shift inside
    # cum_max, both over the account) took polars 16.8 s on 1,022,865 rows; 1.3 s this way
    s = (
        series.sort("account_id", "month")
        .with_columns(ended_before=pl.col("end_mrr_minor").shift(1).over("account_id") > 0)
        .with_columns(
            had_before=(
                (pl.col("start_mrr_minor") > 0).cum_max().over("account_id")
                | pl.col("ended_before").fill_null(False).cum_max().over("account_id")
            )
        )
    )
    out = (
        s.filter(pl.col("end_mrr_minor") != pl.col("start_mrr_minor"))
        .with_columns(amount_minor=pl.col("end_mrr_minor") - pl.col("start_mrr_minor"))
        .with_columns(
            movement=pl.when(pl.col("start_mrr_minor") == 0)
            .then(
                pl.when(pl.col("had_before")).then(pl.lit("reactivation")).otherwise(pl.lit("new"))
            )
            .when(pl.col("end_mrr_minor") == 0)
            .then(pl.lit("churn"))
            .when(pl.col("amount_minor") > 0)
            .then(pl.lit("expansion"))
            .otherwise(pl.lit("contraction"))
        )
    )
    return out.select(pl.col(name).cast(dtype) for name, dtype in MOVEMENT_SCHEMA.items())


def changed_months_sql(mrr: str, points: str) -> str:
    """SQL: from ``mrr`` (rows ``account_id, t, reporting_mrr_minor`` at the ``points``), the
    account-months whose MRR changed: ``account_id, month, start_mrr_minor, end_mrr_minor``.

    A month's start is the previous point's MRR, 0 where the account has no row there (none
    in force); an account with an unconvertible amount (NULL) at any point is left out.
    Months without a change are not returned: :func:`classify_movements` gives them no row
    and they decide nothing (an earlier MRR above zero is always followed by a changed
    month down to zero before a month that starts at zero). Pairs of consecutive points
    by a join on their rank, not a window over a grid of every account at every point
    (``tests/test_movements_paths.py`` holds it equal to that grid).
    """
    return f"""
      WITH m AS ({mrr}),
      acc AS (
        SELECT account_id, t, sum(reporting_mrr_minor) AS mrr,
               bool_or(reporting_mrr_minor IS NULL) AS missing
        FROM m GROUP BY ALL
      ),
      -- the points in order: k = 1 is the end of the month before the first one
      pts AS (SELECT t, row_number() OVER (ORDER BY t) AS k FROM ({points})),
      -- an account with MRR it cannot convert at some point is left out (every month)
      ak AS (
        SELECT a.account_id, p.k, a.mrr FROM acc a JOIN pts p USING (t)
        ANTI JOIN (SELECT DISTINCT account_id FROM acc WHERE missing) x USING (account_id)
      ),
      -- each month: MRR at its end against the end of the month before (0 where an
      -- account has no row: none in force then); only the months where it changed
      pairs AS (
        SELECT COALESCE(e.account_id, s.account_id) AS account_id,
               COALESCE(e.k, s.k + 1) AS k,
               COALESCE(s.mrr, 0) AS start_mrr, COALESCE(e.mrr, 0) AS end_mrr
        FROM ak e FULL JOIN ak s ON s.account_id = e.account_id AND s.k = e.k - 1
      )
      SELECT q.account_id, CAST(date_trunc('month', p.t) AS DATE) AS month,
             CAST(q.start_mrr AS BIGINT) AS start_mrr_minor,
             CAST(q.end_mrr AS BIGINT) AS end_mrr_minor
      FROM pairs q JOIN pts p ON p.k = q.k
      WHERE q.k > 1 AND q.start_mrr <> q.end_mrr
    """


def movements(tables: Tables, as_of: datetime, settings: SignalSettings) -> pl.DataFrame:
    """``mrr_movements`` for the months up to ``as_of``, in the reporting currency.

    MRR is taken just before every month start and at ``as_of`` (a month's movement is
    the change between the end of the previous month and the end of this one); an account whose MRR cannot be
    converted (missing rate) is left out rather than guessed.
    """
    months = settings.movements_months
    points = f"""
      SELECT CAST(m AS TIMESTAMP) - INTERVAL 1 MICROSECOND AS t FROM range(
        date_trunc('month', CAST($as_of AS TIMESTAMP)) - INTERVAL {months} MONTH,
        -- a month start equal to as_of still closes the previous month
        CAST($as_of AS TIMESTAMP) + INTERVAL 1 MICROSECOND, INTERVAL 1 MONTH) r(m)
      UNION SELECT CAST($as_of AS TIMESTAMP)
    """
    sql = changed_months_sql(account_mrr_sql(points, settings), points)
    return classify_movements(tables.frame(sql, {"as_of": as_of}))


# --- MRR around a subscription's changes (the downgrade signal, the timeline's changes) ---


def item_change_instants(since: str) -> str:
    """SQL rows ``(subscription_id, c)``: every instant in ``(since, $as_of]`` at which a
    subscription's items or discounts change (the bounds of its item versions and of its
    discounts): where its plan, seats or MRR may move. ``since`` names the parameter."""
    return f"""
  SELECT subscription_id, valid_from AS c FROM history_subscription_items
  WHERE valid_from > {since} AND valid_from <= $as_of
  UNION SELECT subscription_id, valid_to FROM history_subscription_items
  WHERE valid_to > {since} AND valid_to <= $as_of
  UNION SELECT subscription_id, starts_at FROM core_subscription_discounts
  WHERE starts_at > {since} AND starts_at <= $as_of
  UNION SELECT subscription_id, ends_at FROM core_subscription_discounts
  WHERE ends_at > {since} AND ends_at <= $as_of
"""


#: Each change instant (``c`` of the CTE ``chg``) and the instant just before it, per
#: subscription: the points :func:`mrr_around_changes` prices.
AROUND_CHANGES = """
  SELECT subscription_id, c AS t FROM chg
  UNION ALL SELECT subscription_id, c - INTERVAL 1 MICROSECOND FROM chg
"""


def mrr_around_changes(settings: SignalSettings) -> str:
    """Two CTEs over a CTE ``chg`` (``subscription_id, c``): ``around_items``, each
    subscription's items at each change and just before it (:func:`item_mrr_sql`, computed
    once), and ``sub_mrr``, its MRR there (:func:`subscription_mrr_sql` over those items)."""
    items = item_mrr_sql(AROUND_CHANGES, settings, per_subscription=True)
    mrr = subscription_mrr_sql(
        AROUND_CHANGES, settings, per_subscription=True, items="SELECT * FROM around_items"
    )
    return f"around_items AS MATERIALIZED ({items}),\nsub_mrr AS ({mrr})"


def subscription_owner() -> str:
    """SQL rows ``(subscription_id, account_id)``: each subscription's account by its
    customer's link as of ``$as_of``."""
    return f"""
  SELECT DISTINCT h.subscription_id, {account_key("h.customer_id")} AS account_id
  FROM history_subscriptions h LEFT JOIN account_links_as_of($as_of) l
    ON l.customer_id = h.customer_id
  WHERE h.valid_from <= $as_of
"""
