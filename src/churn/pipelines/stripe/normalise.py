"""``raw_stripe_*`` -> ``core_*``: typed rows from payloads of both API shapes, in SQL.

Each core table is brought up to date from its raw table in one statement (set-based,
inside the caller's transaction), for the objects landed since the last rebuild
(``stripe_dirty``) or, with ``full``, for every raw row. Shapes handled side by side:

- period dates on the subscription (older versions) or on its items (current);
- an invoice's subscription at top level (older) or under
  ``parent.subscription_details.subscription`` (current);
- a charge's invoice (older) or none (current);
- legacy Plans (``amount``, ``interval``) and Prices (``unit_amount``, ``recurring``);
- legacy card sources and PaymentMethods;
- ids or expanded objects wherever Stripe allows ``expand``.

A payload that cannot be normalised (a required field missing or of the wrong type)
goes to ``quarantine`` with the reason and is left out of core; the rest goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Rule:
    stream: str
    reason: str
    #: SQL over ``payload`` that is TRUE when the payload cannot be normalised.
    broken: str


_ITEMS = "CAST(payload->'$.items.data' AS JSON[])"

RULES: tuple[Rule, ...] = (
    Rule("customer", "id is not a customer id", "NOT starts_with(id, 'cus_')"),
    Rule(
        "subscription",
        "no customer or status",
        "stripe_id(payload->'$.customer') IS NULL OR payload->>'$.status' IS NULL",
    ),
    Rule(
        "subscription",
        "items missing or an item without price or plan",
        f"json_type(payload->'$.items.data') IS DISTINCT FROM 'ARRAY' OR "
        f"list_bool_or(list_transform({_ITEMS}, lambda i: coalesce(stripe_id(i->'$.price'), "
        f"stripe_id(i->'$.plan')) IS NULL))",
    ),
    Rule(
        "subscription",
        "an item quantity is not an integer",
        f"list_bool_or(list_transform({_ITEMS}, lambda i: i->>'$.quantity' IS NOT NULL "
        f"AND TRY_CAST(i->>'$.quantity' AS BIGINT) IS NULL))",
    ),
    Rule(
        "price",
        "no currency, or an amount that is not an integer",
        "payload->>'$.currency' IS NULL OR (coalesce(payload->>'$.unit_amount', "
        "payload->>'$.amount') IS NOT NULL AND TRY_CAST(coalesce(payload->>'$.unit_amount', "
        "payload->>'$.amount') AS BIGINT) IS NULL)",
    ),
    Rule(
        "invoice",
        "no currency, or an amount that is not an integer",
        "payload->>'$.currency' IS NULL OR (payload->>'$.amount_due' IS NOT NULL AND "
        "TRY_CAST(payload->>'$.amount_due' AS BIGINT) IS NULL)",
    ),
    Rule(
        "charge",
        "no currency, or an amount that is missing or not an integer",
        "payload->>'$.currency' IS NULL OR TRY_CAST(payload->>'$.amount' AS BIGINT) IS NULL",
    ),
    Rule(
        "refund",
        "amount missing or not an integer",
        "TRY_CAST(payload->>'$.amount' AS BIGINT) IS NULL",
    ),
)


_SCOPE = "__SCOPE__"


def _ok(stream: str) -> str:
    """Raw rows of a stream in scope (``__SCOPE__``) that are not quarantined."""
    return (
        f"(SELECT * FROM raw_stripe_{stream} r WHERE {_SCOPE} AND NOT EXISTS (SELECT 1 "
        f"FROM quarantine q WHERE q.source = 'stripe' AND q.stream = '{stream}' "
        f"AND q.object_id = r.id))"
    )


def _ts(path: str) -> str:
    return f"stripe_ts(payload->'{path}')"


CORE_SQL: dict[str, str] = {
    "core_customers": f"""
        SELECT id, payload->>'$.name', payload->>'$.email',
               nullif(lower(split_part(payload->>'$.email', '@', 2)), ''),
               payload->>'$.currency', payload->'$.metadata',
               stripe_id(payload->'$.invoice_settings.default_payment_method'),
               stripe_id(payload->'$.default_source'),
               TRY_CAST(payload->>'$.delinquent' AS BOOLEAN), livemode, {_ts("$.created")},
               is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)
        FROM {_ok("customer")}""",
    "core_products": f"""
        SELECT id, payload->>'$.name', TRY_CAST(payload->>'$.active' AS BOOLEAN), livemode,
               {_ts("$.created")},
               is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)
        FROM {_ok("product")}""",
    "core_prices": f"""
        SELECT id, stripe_id(payload->'$.product'), payload->>'$.nickname',
               lower(payload->>'$.currency'),
               coalesce(payload->>'$.type',
                        CASE WHEN payload->>'$.object' = 'plan' THEN 'recurring' END),
               payload->>'$.billing_scheme',
               CAST(coalesce(payload->>'$.unit_amount', payload->>'$.amount') AS BIGINT),
               coalesce(payload->>'$.unit_amount_decimal', payload->>'$.amount_decimal'),
               payload->>'$.tiers_mode',
               CASE WHEN json_type(payload->'$.tiers') = 'ARRAY' THEN payload->'$.tiers' END,
               coalesce(payload->>'$.recurring.interval', payload->>'$.interval'),
               TRY_CAST(coalesce(payload->>'$.recurring.interval_count',
                                 payload->>'$.interval_count') AS INTEGER),
               coalesce(payload->>'$.recurring.usage_type', payload->>'$.usage_type'),
               TRY_CAST(coalesce(payload->>'$.transform_quantity.divide_by',
                                 payload->>'$.transform_usage.divide_by') AS BIGINT),
               coalesce(payload->>'$.transform_quantity.round',
                        payload->>'$.transform_usage.round'),
               TRY_CAST(payload->>'$.active' AS BOOLEAN), livemode, {_ts("$.created")},
               is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)
        FROM {_ok("price")}""",
    "core_coupons": f"""
        SELECT id, TRY_CAST(payload->>'$.percent_off' AS DECIMAL(9, 4)),
               TRY_CAST(payload->>'$.amount_off' AS BIGINT), lower(payload->>'$.currency'),
               payload->>'$.duration', TRY_CAST(payload->>'$.duration_in_months' AS INTEGER),
               livemode, {_ts("$.created")},
               is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)
        FROM {_ok("coupon")}""",
    "core_subscriptions": f"""
        SELECT id, stripe_id(payload->'$.customer'), payload->>'$.status',
               lower(coalesce(payload->>'$.currency', payload->>'$.plan.currency',
                              {_ITEMS}[1]->>'$.price.currency',
                              {_ITEMS}[1]->>'$.plan.currency')),
               payload->>'$.collection_method',
               coalesce(TRY_CAST(payload->>'$.cancel_at_period_end' AS BOOLEAN), FALSE),
               {_ts("$.cancel_at")}, {_ts("$.canceled_at")}, {_ts("$.ended_at")},
               coalesce({_ts("$.current_period_start")},
                        list_min(list_transform({_ITEMS},
                                 lambda i: stripe_ts(i->'$.current_period_start')))),
               coalesce({_ts("$.current_period_end")},
                        list_min(list_transform({_ITEMS},
                                 lambda i: stripe_ts(i->'$.current_period_end')))),
               {_ts("$.trial_start")}, {_ts("$.trial_end")},
               coalesce({_ts("$.start_date")}, {_ts("$.start")}),
               stripe_id(payload->'$.default_payment_method'),
               stripe_id(payload->'$.default_source'), stripe_id(payload->'$.latest_invoice'),
               payload->>'$.cancellation_details.reason', payload->'$.metadata', livemode,
               {_ts("$.created")}, is_deleted
        FROM {_ok("subscription")}""",
    "core_subscription_items": f"""
        SELECT i->>'$.id', id,
               coalesce(stripe_id(i->'$.price'), stripe_id(i->'$.plan')),
               CAST(i->>'$.quantity' AS BIGINT),
               coalesce(stripe_ts(i->'$.current_period_start'), {_ts("$.current_period_start")}),
               coalesce(stripe_ts(i->'$.current_period_end'), {_ts("$.current_period_end")}),
               stripe_ts(i->'$.created')
        FROM (SELECT id, payload, unnest({_ITEMS}) AS i FROM {_ok("subscription")})""",
    "core_subscription_discounts": f"""
        SELECT id AS sid, coalesce(d->>'$.id', 'coupon:' || (d->>'$.coupon.id')) AS did,
               d->>'$.coupon.id', TRY_CAST(d->>'$.coupon.percent_off' AS DECIMAL(9, 4)),
               TRY_CAST(d->>'$.coupon.amount_off' AS BIGINT), lower(d->>'$.coupon.currency'),
               d->>'$.coupon.duration',
               TRY_CAST(d->>'$.coupon.duration_in_months' AS INTEGER),
               stripe_ts(d->'$.start'), stripe_ts(d->'$.end')
        FROM (
            SELECT id, unnest(list_filter(
                list_concat([payload->'$.discount'],
                            coalesce(CAST(payload->'$.discounts' AS JSON[]), [])),
                lambda d: json_type(d) = 'OBJECT')) AS d
            FROM {_ok("subscription")})
        QUALIFY row_number() OVER (PARTITION BY sid, did) = 1""",
    "core_invoices": f"""
        SELECT id, stripe_id(payload->'$.customer'),
               coalesce(stripe_id(payload->'$.subscription'),
                        payload->>'$.parent.subscription_details.subscription'),
               payload->>'$.status', lower(payload->>'$.currency'),
               CAST(payload->>'$.amount_due' AS BIGINT),
               TRY_CAST(payload->>'$.amount_paid' AS BIGINT),
               TRY_CAST(payload->>'$.amount_remaining' AS BIGINT),
               TRY_CAST(payload->>'$.subtotal' AS BIGINT),
               coalesce(TRY_CAST(payload->>'$.tax' AS BIGINT),
                        list_sum(list_transform(CAST(payload->'$.total_taxes' AS JSON[]),
                                 lambda t: TRY_CAST(t->>'$.amount' AS BIGINT)))),
               TRY_CAST(payload->>'$.total' AS BIGINT),
               TRY_CAST(payload->>'$.attempt_count' AS INTEGER),
               TRY_CAST(payload->>'$.attempted' AS BOOLEAN),
               {_ts("$.next_payment_attempt")}, payload->>'$.billing_reason',
               payload->>'$.collection_method', {_ts("$.period_start")},
               {_ts("$.period_end")}, {_ts("$.due_date")},
               {_ts("$.status_transitions.finalized_at")}, {_ts("$.status_transitions.paid_at")},
               {_ts("$.status_transitions.voided_at")},
               {_ts("$.status_transitions.marked_uncollectible_at")},
               stripe_id(payload->'$.charge'), stripe_id(payload->'$.payment_intent'), livemode,
               {_ts("$.created")},
               is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)
        FROM {_ok("invoice")}""",
    "core_charges": f"""
        SELECT id, stripe_id(payload->'$.customer'), stripe_id(payload->'$.invoice'),
               stripe_id(payload->'$.payment_intent'),
               coalesce(stripe_id(payload->'$.payment_method'), stripe_id(payload->'$.source')),
               CAST(payload->>'$.amount' AS BIGINT),
               TRY_CAST(payload->>'$.amount_refunded' AS BIGINT), lower(payload->>'$.currency'),
               payload->>'$.status', TRY_CAST(payload->>'$.paid' AS BOOLEAN),
               payload->>'$.failure_code', payload->>'$.failure_message',
               coalesce(payload->>'$.outcome.reason', payload->>'$.failure_code'),
               payload->>'$.outcome.type',
               TRY_CAST(coalesce(payload->>'$.payment_method_details.card.exp_month',
                                 payload->>'$.source.exp_month') AS INTEGER),
               TRY_CAST(coalesce(payload->>'$.payment_method_details.card.exp_year',
                                 payload->>'$.source.exp_year') AS INTEGER),
               livemode, {_ts("$.created")}
        FROM {_ok("charge")}""",
    "core_refunds": f"""
        SELECT id, stripe_id(payload->'$.charge'), CAST(payload->>'$.amount' AS BIGINT),
               lower(payload->>'$.currency'), payload->>'$.status', payload->>'$.reason',
               {_ts("$.created")}
        FROM {_ok("refund")}""",
    # A PaymentMethod keeps its card under `card`; a legacy card source is the card.
    "core_payment_methods": f"""
        SELECT id, stripe_id(payload->'$.customer'),
               coalesce(payload->>'$.type', payload->>'$.object'),
               coalesce(payload->>'$.card.brand', payload->>'$.brand'),
               coalesce(payload->>'$.card.last4', payload->>'$.last4'),
               TRY_CAST(coalesce(payload->>'$.card.exp_month', payload->>'$.exp_month') AS INTEGER),
               TRY_CAST(coalesce(payload->>'$.card.exp_year', payload->>'$.exp_year') AS INTEGER),
               livemode, {_ts("$.created")},
               is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)
        FROM raw_stripe_payment_method WHERE {_SCOPE}""",
}

#: Each core table's raw stream and the column holding that stream's object id.
CORE_KEYS: dict[str, tuple[str, str]] = {
    "core_customers": ("customer", "customer_id"),
    "core_products": ("product", "product_id"),
    "core_prices": ("price", "price_id"),
    "core_coupons": ("coupon", "coupon_id"),
    "core_subscriptions": ("subscription", "subscription_id"),
    "core_subscription_items": ("subscription", "subscription_id"),
    "core_subscription_discounts": ("subscription", "subscription_id"),
    "core_invoices": ("invoice", "invoice_id"),
    "core_charges": ("charge", "charge_id"),
    "core_refunds": ("refund", "refund_id"),
    "core_payment_methods": ("payment_method", "payment_method_id"),
}


def dirty(stream: str, column: str = "id") -> str:
    """SQL: ``column`` names an object of ``stream`` landed since the last rebuild."""
    return f"{column} IN (SELECT d.id FROM stripe_dirty d WHERE d.stream = '{stream}')"


def quarantine(con: duckdb.DuckDBPyConnection, run_id: str | None, *, full: bool = False) -> int:
    """Re-derive Stripe's quarantine rows (of the dirty objects, or all); returns how many."""
    if full:
        con.execute("DELETE FROM quarantine WHERE source = 'stripe'")
    else:
        con.execute(
            "DELETE FROM quarantine WHERE source = 'stripe' AND (stream, object_id) IN "
            "(SELECT stream, id FROM stripe_dirty)"
        )
    for rule in RULES:
        scope = "TRUE" if full else dirty(rule.stream)
        con.execute(
            f"""
            INSERT INTO quarantine
            -- materialised first: DuckDB would otherwise test every row's JSON
            WITH scoped AS MATERIALIZED (SELECT * FROM raw_stripe_{rule.stream} WHERE {scope})
            SELECT 'stripe', '{rule.stream}', id, ?, payload, ?, now()::TIMESTAMP
            FROM scoped
            WHERE coalesce(({rule.broken}), FALSE)
            ON CONFLICT DO NOTHING
            """,
            [rule.reason, run_id],
        )
    row = con.execute("SELECT count(*) FROM quarantine WHERE source = 'stripe'").fetchone()
    return int(row[0]) if row else 0


def normalise(
    con: duckdb.DuckDBPyConnection, run_id: str | None = None, *, full: bool = False
) -> int:
    """Bring the Stripe core tables up to date; returns how many payloads are quarantined.

    Only the objects in ``stripe_dirty`` are redone (``full``: every raw row). The caller
    empties ``stripe_dirty`` once the history is rebuilt too (same transaction).
    """
    quarantined = quarantine(con, run_id, full=full)
    for table, select in CORE_SQL.items():
        stream, key = CORE_KEYS[table]
        if full:
            con.execute(f"DELETE FROM {table}")
            con.execute(f"INSERT INTO {table} {select.replace(_SCOPE, 'TRUE')}")
        else:
            con.execute(f"DELETE FROM {table} WHERE {dirty(stream, key)}")
            con.execute(f"INSERT INTO {table} {select.replace(_SCOPE, dirty(stream, 'id'))}")
    return quarantined
