"""The Stripe streams: one declaration per object type, everything else derived from it.

A :class:`Stream` names its Stripe object (and the legacy names landing with it), its id
prefix, how it is listed (path, parameters, the ``created`` cursor it pages and windows
on), whether a reconciliation re-lists it, and its ``core_*`` tables column by column.
From :data:`STREAMS` come the raw tables (``raw_stripe_<name>``), ``OBJECT_TABLES`` (the
table an event's object lands in), the listed streams the backfill and reconciliation
read, the normaliser's statements (filled by column name), the stand-in's resources and
id prefixes, the world's kinds, the demo's checks and the kill test's tables.

To add a stream: declare it here; add a migration creating ``raw_stripe_<name>`` and its
core table(s); teach ``sandbox/world.py`` to generate it.
``tests/stripe_extract/test_streams_registry.py`` checks the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: SQL: a subscription payload's items, as a list of JSON.
ITEMS_JSON = "CAST(payload->'$.items.data' AS JSON[])"

_LINES = "CAST(payload->'$.lines.data' AS JSON[])"
#: The subscription an invoice line ``l`` names itself, in both shapes (since
#: 2025-03-31.basil under ``parent.subscription_item_details``, before at the top); NULL
#: when it names none (the invoice's own). The history reads lines by it too.
LINE_SUBSCRIPTION = (
    "coalesce(l->>'$.parent.subscription_item_details.subscription', "
    "stripe_id(l->'$.subscription'))"
)
# The subscriptions an invoice's lines name other than its own; [] when there are none
# or no lines.
_OTHER_SUBSCRIPTIONS = (
    f"coalesce(list_distinct(list_filter(list_transform({_LINES}, lambda l: {LINE_SUBSCRIPTION}), "
    "lambda s: s IS NOT NULL AND s IS DISTINCT FROM coalesce(stripe_id(payload->'$.subscription'), "
    "payload->>'$.parent.subscription_details.subscription'))), [])"
)
# An invoice line's inclusive tax entries, in both shapes.
_INCL = (
    "list_filter(coalesce(CAST(l->'$.taxes' AS JSON[]), CAST(l->'$.tax_amounts' AS JSON[]), []), "
    "lambda x: coalesce(x->>'$.tax_behavior' = 'inclusive', "
    "TRY_CAST(x->>'$.inclusive' AS BOOLEAN), FALSE))"
)
_INCL_TAX = (
    f"coalesce(list_sum(list_transform({_INCL}, lambda x: TRY_CAST(x->>'$.amount' AS BIGINT))), 0)"
)
_INCL_TAXABLE = (
    f"coalesce(list_max(list_transform({_INCL}, "
    "lambda x: TRY_CAST(x->>'$.taxable_amount' AS BIGINT))), 0)"
)


#: SQL over the subscriptions in scope (``{ok}``): every discount each one has had, as
#: ``(id, d, c, ends_at)``: the discount object ``d`` (inline in the payload: the old
#: single ``discount`` or an expanded ``discounts`` entry; else the landed
#: ``raw_stripe_discount`` of an id), its coupon ``c`` (basil and before: ``d.coupon``,
#: auto-expanded; since 2025-09-30.clover ``d.source.coupon``, an id "not automatically
#: expanded", resolved from ``raw_stripe_coupon``), and when it stopped applying: its
#: ``end``, else when it was deleted (``customer.discount.deleted``), else the first
#: version of the subscription after its start that no longer names it. Point in time:
#: a discount counts only inside ``[starts_at, ends_at)``.
SUBSCRIPTION_DISCOUNTS = """
    WITH subs AS (SELECT id, payload FROM {ok}),
    refs AS (
        SELECT id, r FROM (
            SELECT id, unnest(list_concat([payload->'$.discount'],
                   coalesce(CAST(payload->'$.discounts' AS JSON[]), []))) AS r FROM subs)
        WHERE json_type(r) IN ('OBJECT', 'VARCHAR')
        UNION ALL
        -- a discount landed for the subscription that its latest payload no longer names
        SELECT s.id, to_json(rd.id) FROM subs s JOIN raw_stripe_discount rd
          ON stripe_id(rd.payload->'$.subscription') = s.id
    ),
    found AS (
        SELECT f.id, coalesce(rd.payload, CASE WHEN json_type(f.r) = 'OBJECT' THEN f.r END) AS d,
               coalesce(rd.is_deleted, FALSE) AS deleted, rd.version_ts AS deleted_ts
        FROM refs f LEFT JOIN raw_stripe_discount rd
          ON rd.id = CASE WHEN json_type(f.r) = 'OBJECT' THEN f.r->>'$.id' ELSE f.r->>'$' END
    ),
    coupons AS (
        SELECT f.*, coalesce(
            CASE WHEN json_type(f.d->'$.coupon') = 'OBJECT' THEN f.d->'$.coupon' END,
            CASE WHEN json_type(f.d->'$.source.coupon') = 'OBJECT' THEN f.d->'$.source.coupon' END,
            rc.payload) AS c
        FROM found f LEFT JOIN raw_stripe_coupon rc
          ON rc.id = coalesce(stripe_id(f.d->'$.source.coupon'), stripe_id(f.d->'$.coupon'))
        WHERE f.d IS NOT NULL
    )
    SELECT c.id, c.d, c.c,
           least(stripe_ts(c.d->'$.end'), CASE WHEN c.deleted THEN c.deleted_ts END,
                 (SELECT min(v.version_ts) FROM stripe_subscription_versions v
                  WHERE v.subscription_id = c.id
                    AND v.version_ts > coalesce(stripe_ts(c.d->'$.start'), v.version_ts)
                    AND NOT list_contains(list_transform(list_concat([v.payload->'$.discount'],
                            coalesce(CAST(v.payload->'$.discounts' AS JSON[]), [])),
                            lambda x: stripe_id(x)), c.d->>'$.id'))) AS ends_at
    FROM coupons c
"""


@dataclass(frozen=True)
class CoreTable:
    """A ``core_*`` table filled from one stream's raw rows, column by column."""

    name: str
    #: The column holding the stream's object id (what a partial rebuild deletes by).
    key: str
    #: (column, SQL over ``payload`` and the raw row's columns), in any order.
    columns: tuple[tuple[str, str], ...]
    #: The FROM clause; ``{ok}`` is the stream's raw rows in scope, not quarantined.
    source: str = "FROM {ok}"
    #: A QUALIFY condition over the output columns (de-duplication), if any.
    qualify: str | None = None
    #: The columns that name one row (``key`` when empty). Not a constraint: core is
    #: derived, one row each by construction (migration 115 says why the keys went), and
    #: the rebuild tests check it.
    unique: tuple[str, ...] = ()


#: The Stripe history's tables and the columns that name one row in each: not
#: constraints either (migration 115), held by the rebuild and checked by its tests.
HISTORY_KEYS: dict[str, tuple[str, ...]] = {
    "history_subscriptions": ("subscription_id", "valid_from"),
    "history_subscription_items": ("item_id", "valid_from"),
    "history_payment_methods": ("payment_method_id", "valid_from"),
    "history_customer_defaults": ("customer_id", "valid_from"),
}


@dataclass(frozen=True)
class Stream:
    name: str  # the Stripe object's `object` value; also the suffix of raw_stripe_<name>
    #: Where it is listed; None for objects that only arrive embedded or by event.
    path: str | None
    params: dict[str, Any] = field(default_factory=dict)
    #: Asked when ``path`` answers 404 (older API versions: /v1/plans for /v1/prices).
    fallback_path: str | None = None
    #: Re-listed and diffed by a reconciliation (objects that change after creation).
    mutable: bool = True
    #: Grows with every billing cycle: a scheduled reconciliation re-lists only the ones
    #: created within ``reconcile_window_days`` (older ones rarely change, and when they
    #: do Stripe sends an event); a forced or explicit one re-lists them all.
    windowed: bool = False
    #: The prefix of its ids (None where the account chooses them: coupons).
    id_prefix: str | None = None
    #: Legacy object names that land in the same table (a Plan is a Price).
    aliases: tuple[str, ...] = ()
    #: The field a listing pages and windows on.
    cursor: str = "created"
    #: Where the stand-in serves it when it is not listed (``/v1/<resource>``).
    resource: str | None = None
    #: Listed only where the API serves it: a 404 on its listing means none to list (an
    #: older API version or localstripe), not an error, and deletes nothing.
    optional: bool = False
    core: tuple[CoreTable, ...] = ()

    @property
    def table(self) -> str:
        return f"raw_stripe_{self.name}"

    @property
    def served_as(self) -> str:
        """The ``/v1/<resource>`` segment it is served under."""
        if self.path:
            return self.path.rsplit("/", 1)[-1]
        return self.resource or f"{self.name}s"


STREAMS: tuple[Stream, ...] = (
    Stream(
        "product",
        "/v1/products",
        mutable=False,
        id_prefix="prod_",
        core=(
            CoreTable(
                "core_products",
                key="product_id",
                columns=(
                    ("product_id", "id"),
                    ("name", "payload->>'$.name'"),
                    ("active", "TRY_CAST(payload->>'$.active' AS BOOLEAN)"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                    (
                        "is_deleted",
                        "is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)",
                    ),
                ),
            ),
        ),
    ),
    # A price's (or plan's) tiers are left out of its payload unless expanded: without
    # them a tiered price cannot be priced (the MRR engine would read zero).
    Stream(
        "price",
        "/v1/prices",
        {"expand": ["data.tiers"]},
        fallback_path="/v1/plans",
        mutable=False,
        id_prefix="price_",
        aliases=("plan",),
        core=(
            CoreTable(
                "core_prices",
                key="price_id",
                columns=(
                    ("price_id", "id"),
                    ("product_id", "stripe_id(payload->'$.product')"),
                    ("nickname", "payload->>'$.nickname'"),
                    ("currency", "lower(payload->>'$.currency')"),
                    (
                        "type",
                        "coalesce(payload->>'$.type', CASE WHEN payload->>'$.object' = 'plan' THEN 'recurring' END)",
                    ),
                    ("billing_scheme", "payload->>'$.billing_scheme'"),
                    (
                        "unit_amount",
                        "CAST(coalesce(payload->>'$.unit_amount', payload->>'$.amount') AS BIGINT)",
                    ),
                    (
                        "unit_amount_decimal",
                        "coalesce(payload->>'$.unit_amount_decimal', payload->>'$.amount_decimal')",
                    ),
                    ("tiers_mode", "payload->>'$.tiers_mode'"),
                    ("tax_behavior", "payload->>'$.tax_behavior'"),
                    (
                        "tiers",
                        "CASE WHEN json_type(payload->'$.tiers') = 'ARRAY' THEN payload->'$.tiers' END",
                    ),
                    (
                        "recurring_interval",
                        "coalesce(payload->>'$.recurring.interval', payload->>'$.interval')",
                    ),
                    (
                        "recurring_interval_count",
                        "TRY_CAST(coalesce(payload->>'$.recurring.interval_count', payload->>'$.interval_count') AS INTEGER)",
                    ),
                    (
                        "usage_type",
                        "coalesce(payload->>'$.recurring.usage_type', payload->>'$.usage_type')",
                    ),
                    (
                        "transform_divide_by",
                        "TRY_CAST(coalesce(payload->>'$.transform_quantity.divide_by', payload->>'$.transform_usage.divide_by') AS BIGINT)",
                    ),
                    (
                        "transform_round",
                        "coalesce(payload->>'$.transform_quantity.round', payload->>'$.transform_usage.round')",
                    ),
                    ("active", "TRY_CAST(payload->>'$.active' AS BOOLEAN)"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                    (
                        "is_deleted",
                        "is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)",
                    ),
                ),
            ),
        ),
    ),
    Stream(
        "coupon",
        "/v1/coupons",
        core=(
            CoreTable(
                "core_coupons",
                key="coupon_id",
                columns=(
                    ("coupon_id", "id"),
                    ("percent_off", "TRY_CAST(payload->>'$.percent_off' AS DECIMAL(9, 4))"),
                    ("amount_off", "TRY_CAST(payload->>'$.amount_off' AS BIGINT)"),
                    ("currency", "lower(payload->>'$.currency')"),
                    ("duration", "payload->>'$.duration'"),
                    ("duration_in_months", "TRY_CAST(payload->>'$.duration_in_months' AS INTEGER)"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                    (
                        "is_deleted",
                        "is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)",
                    ),
                ),
            ),
        ),
    ),
    # Default payment methods (and a legacy default card) come embedded, so no call per
    # customer is needed; Checkout sets the card on the subscription, not the customer.
    Stream(
        "customer",
        "/v1/customers",
        {"expand": ["data.invoice_settings.default_payment_method", "data.default_source"]},
        id_prefix="cus_",
        core=(
            CoreTable(
                "core_customers",
                key="customer_id",
                columns=(
                    ("customer_id", "id"),
                    ("name", "payload->>'$.name'"),
                    ("email", "payload->>'$.email'"),
                    ("email_domain", "nullif(lower(split_part(payload->>'$.email', '@', 2)), '')"),
                    ("currency", "payload->>'$.currency'"),
                    ("metadata", "payload->'$.metadata'"),
                    (
                        "default_payment_method",
                        "stripe_id(payload->'$.invoice_settings.default_payment_method')",
                    ),
                    ("default_source", "stripe_id(payload->'$.default_source')"),
                    ("delinquent", "TRY_CAST(payload->>'$.delinquent' AS BOOLEAN)"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                    (
                        "is_deleted",
                        "is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)",
                    ),
                ),
            ),
        ),
    ),
    Stream(
        "subscription",
        "/v1/subscriptions",
        # "Discounts cannot be fetched by ID. Use expand[]=discounts in API calls to expand
        # discount IDs in an array" (the Discount object's `id`): since basil a
        # subscription's `discounts` are ids, expanded here and landed on their own.
        {"status": "all", "expand": ["data.default_payment_method", "data.discounts"]},
        id_prefix="sub_",
        core=(
            CoreTable(
                "core_subscriptions",
                key="subscription_id",
                columns=(
                    ("subscription_id", "id"),
                    ("customer_id", "stripe_id(payload->'$.customer')"),
                    ("status", "payload->>'$.status'"),
                    (
                        "currency",
                        "lower(coalesce(payload->>'$.currency', payload->>'$.plan.currency', CAST(payload->'$.items.data' AS JSON[])[1]->>'$.price.currency', CAST(payload->'$.items.data' AS JSON[])[1]->>'$.plan.currency'))",
                    ),
                    ("collection_method", "payload->>'$.collection_method'"),
                    (
                        "cancel_at_period_end",
                        "coalesce(TRY_CAST(payload->>'$.cancel_at_period_end' AS BOOLEAN), FALSE)",
                    ),
                    ("cancel_at", "stripe_ts(payload->'$.cancel_at')"),
                    ("canceled_at", "stripe_ts(payload->'$.canceled_at')"),
                    ("ended_at", "stripe_ts(payload->'$.ended_at')"),
                    (
                        "current_period_start",
                        "coalesce(stripe_ts(payload->'$.current_period_start'), list_min(list_transform(CAST(payload->'$.items.data' AS JSON[]), lambda i: stripe_ts(i->'$.current_period_start'))))",
                    ),
                    (
                        "current_period_end",
                        "coalesce(stripe_ts(payload->'$.current_period_end'), list_min(list_transform(CAST(payload->'$.items.data' AS JSON[]), lambda i: stripe_ts(i->'$.current_period_end'))))",
                    ),
                    ("trial_start", "stripe_ts(payload->'$.trial_start')"),
                    ("trial_end", "stripe_ts(payload->'$.trial_end')"),
                    (
                        "start_date",
                        "coalesce(stripe_ts(payload->'$.start_date'), stripe_ts(payload->'$.start'))",
                    ),
                    ("default_payment_method", "stripe_id(payload->'$.default_payment_method')"),
                    ("default_source", "stripe_id(payload->'$.default_source')"),
                    ("latest_invoice_id", "stripe_id(payload->'$.latest_invoice')"),
                    ("cancellation_reason", "payload->>'$.cancellation_details.reason'"),
                    ("pause_behavior", "payload->>'$.pause_collection.behavior'"),
                    ("pause_resumes_at", "stripe_ts(payload->'$.pause_collection.resumes_at')"),
                    ("metadata", "payload->'$.metadata'"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                    ("is_deleted", "is_deleted"),
                ),
            ),
            CoreTable(
                "core_subscription_items",
                key="subscription_id",
                unique=("item_id",),
                columns=(
                    ("item_id", "i->>'$.id'"),
                    ("subscription_id", "id"),
                    ("price_id", "coalesce(stripe_id(i->'$.price'), stripe_id(i->'$.plan'))"),
                    ("quantity", "CAST(i->>'$.quantity' AS BIGINT)"),
                    (
                        "current_period_start",
                        "coalesce(stripe_ts(i->'$.current_period_start'), stripe_ts(payload->'$.current_period_start'))",
                    ),
                    (
                        "current_period_end",
                        "coalesce(stripe_ts(i->'$.current_period_end'), stripe_ts(payload->'$.current_period_end'))",
                    ),
                    ("created_at", "stripe_ts(i->'$.created')"),
                ),
                source="FROM (SELECT id, payload, unnest(CAST(payload->'$.items.data' AS JSON[])) AS i FROM {ok})",
            ),
            CoreTable(
                "core_subscription_discounts",
                key="subscription_id",
                unique=("subscription_id", "discount_id"),
                columns=(
                    ("subscription_id", "id"),
                    ("discount_id", "coalesce(d->>'$.id', 'coupon:' || (c->>'$.id'))"),
                    ("coupon_id", "c->>'$.id'"),
                    ("percent_off", "TRY_CAST(c->>'$.percent_off' AS DECIMAL(9, 4))"),
                    ("amount_off", "TRY_CAST(c->>'$.amount_off' AS BIGINT)"),
                    ("currency", "lower(c->>'$.currency')"),
                    ("duration", "c->>'$.duration'"),
                    ("duration_in_months", "TRY_CAST(c->>'$.duration_in_months' AS INTEGER)"),
                    ("starts_at", "stripe_ts(d->'$.start')"),
                    ("ends_at", "ends_at"),
                ),
                source=f"FROM ({SUBSCRIPTION_DISCOUNTS})",
                qualify="row_number() OVER (PARTITION BY subscription_id, discount_id) = 1",
            ),
        ),
    ),
    Stream(
        "invoice",
        "/v1/invoices",
        windowed=True,
        id_prefix="in_",
        core=(
            CoreTable(
                "core_invoices",
                key="invoice_id",
                columns=(
                    ("invoice_id", "id"),
                    ("customer_id", "stripe_id(payload->'$.customer')"),
                    (
                        "subscription_id",
                        "coalesce(stripe_id(payload->'$.subscription'), payload->>'$.parent.subscription_details.subscription')",
                    ),
                    ("status", "payload->>'$.status'"),
                    ("currency", "lower(payload->>'$.currency')"),
                    ("amount_due", "CAST(payload->>'$.amount_due' AS BIGINT)"),
                    ("amount_paid", "TRY_CAST(payload->>'$.amount_paid' AS BIGINT)"),
                    ("amount_remaining", "TRY_CAST(payload->>'$.amount_remaining' AS BIGINT)"),
                    ("subtotal", "TRY_CAST(payload->>'$.subtotal' AS BIGINT)"),
                    (
                        "tax",
                        "coalesce(TRY_CAST(payload->>'$.tax' AS BIGINT), list_sum(list_transform(CAST(payload->'$.total_taxes' AS JSON[]), lambda t: TRY_CAST(t->>'$.amount' AS BIGINT))))",
                    ),
                    ("total", "TRY_CAST(payload->>'$.total' AS BIGINT)"),
                    # inclusive taxes of its lines (current `taxes[].tax_behavior`, older
                    # `tax_amounts[].inclusive`) and the amount they were computed on
                    # (`taxable_amount`, once per line): MRR's net-of-tax ratio
                    ("inclusive_tax", f"list_sum(list_transform({_LINES}, lambda l: {_INCL_TAX}))"),
                    (
                        "inclusive_taxable",
                        f"list_sum(list_transform({_LINES}, lambda l: {_INCL_TAXABLE}))",
                    ),
                    # the other subscriptions its lines name (almost always none): the
                    # history rebuild of a few subscriptions reads only their invoices
                    # and these, not every invoice's lines (history.prepare_chunks)
                    ("other_subscriptions", _OTHER_SUBSCRIPTIONS),
                    ("attempt_count", "TRY_CAST(payload->>'$.attempt_count' AS INTEGER)"),
                    ("attempted", "TRY_CAST(payload->>'$.attempted' AS BOOLEAN)"),
                    ("next_payment_attempt", "stripe_ts(payload->'$.next_payment_attempt')"),
                    ("billing_reason", "payload->>'$.billing_reason'"),
                    ("collection_method", "payload->>'$.collection_method'"),
                    ("period_start", "stripe_ts(payload->'$.period_start')"),
                    ("period_end", "stripe_ts(payload->'$.period_end')"),
                    ("due_date", "stripe_ts(payload->'$.due_date')"),
                    ("finalized_at", "stripe_ts(payload->'$.status_transitions.finalized_at')"),
                    ("paid_at", "stripe_ts(payload->'$.status_transitions.paid_at')"),
                    ("voided_at", "stripe_ts(payload->'$.status_transitions.voided_at')"),
                    (
                        "marked_uncollectible_at",
                        "stripe_ts(payload->'$.status_transitions.marked_uncollectible_at')",
                    ),
                    ("charge_id", "stripe_id(payload->'$.charge')"),
                    ("payment_intent_id", "stripe_id(payload->'$.payment_intent')"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                    (
                        "is_deleted",
                        "is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)",
                    ),
                ),
            ),
        ),
    ),
    Stream(
        "charge",
        "/v1/charges",
        windowed=True,
        id_prefix="ch_",
        core=(
            CoreTable(
                "core_charges",
                key="charge_id",
                columns=(
                    ("charge_id", "id"),
                    ("customer_id", "stripe_id(payload->'$.customer')"),
                    ("invoice_id", "stripe_id(payload->'$.invoice')"),
                    ("payment_intent_id", "stripe_id(payload->'$.payment_intent')"),
                    (
                        "payment_method_id",
                        "coalesce(stripe_id(payload->'$.payment_method'), stripe_id(payload->'$.source'))",
                    ),
                    ("amount", "CAST(payload->>'$.amount' AS BIGINT)"),
                    ("amount_refunded", "TRY_CAST(payload->>'$.amount_refunded' AS BIGINT)"),
                    ("currency", "lower(payload->>'$.currency')"),
                    ("status", "payload->>'$.status'"),
                    ("paid", "TRY_CAST(payload->>'$.paid' AS BOOLEAN)"),
                    ("failure_code", "payload->>'$.failure_code'"),
                    ("failure_message", "payload->>'$.failure_message'"),
                    (
                        "decline_code",
                        "coalesce(payload->>'$.outcome.reason', payload->>'$.failure_code')",
                    ),
                    ("outcome_type", "payload->>'$.outcome.type'"),
                    ("advice_code", "payload->>'$.outcome.advice_code'"),
                    ("network_status", "payload->>'$.outcome.network_status'"),
                    (
                        "card_exp_month",
                        "TRY_CAST(coalesce(payload->>'$.payment_method_details.card.exp_month', payload->>'$.source.exp_month') AS INTEGER)",
                    ),
                    (
                        "card_exp_year",
                        "TRY_CAST(coalesce(payload->>'$.payment_method_details.card.exp_year', payload->>'$.source.exp_year') AS INTEGER)",
                    ),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                ),
            ),
        ),
    ),
    # Since 2025-03-31.basil the join of an invoice and its payments: `payment.type` is
    # payment_intent (each attempt a charge of it) or charge (a charge without one).
    # Listed without an `invoice` filter (it is optional; `created` ranges are accepted).
    Stream(
        "invoice_payment",
        "/v1/invoice_payments",
        windowed=True,
        optional=True,
        id_prefix="inpay_",
        core=(
            CoreTable(
                "core_invoice_payments",
                key="invoice_payment_id",
                columns=(
                    ("invoice_payment_id", "id"),
                    ("invoice_id", "stripe_id(payload->'$.invoice')"),
                    ("payment_type", "payload->>'$.payment.type'"),
                    (
                        "payment_intent_id",
                        "coalesce(stripe_id(payload->'$.payment.payment_intent'), stripe_id(payload->'$.payment_intent'))",
                    ),
                    (
                        "charge_id",
                        "coalesce(stripe_id(payload->'$.payment.charge'), stripe_id(payload->'$.charge'))",
                    ),
                    ("status", "payload->>'$.status'"),
                    ("amount_paid", "TRY_CAST(payload->>'$.amount_paid' AS BIGINT)"),
                    ("amount_requested", "TRY_CAST(payload->>'$.amount_requested' AS BIGINT)"),
                    ("currency", "lower(payload->>'$.currency')"),
                    ("is_default", "TRY_CAST(payload->>'$.is_default' AS BOOLEAN)"),
                    ("paid_at", "stripe_ts(payload->'$.status_transitions.paid_at')"),
                    ("canceled_at", "stripe_ts(payload->'$.status_transitions.canceled_at')"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                ),
            ),
        ),
    ),
    Stream(
        "payment_intent",
        "/v1/payment_intents",
        windowed=True,
        optional=True,
        id_prefix="pi_",
        core=(
            CoreTable(
                "core_payment_intents",
                key="payment_intent_id",
                columns=(
                    ("payment_intent_id", "id"),
                    ("customer_id", "stripe_id(payload->'$.customer')"),
                    ("invoice_id", "stripe_id(payload->'$.invoice')"),
                    ("status", "payload->>'$.status'"),
                    ("amount", "TRY_CAST(payload->>'$.amount' AS BIGINT)"),
                    ("amount_received", "TRY_CAST(payload->>'$.amount_received' AS BIGINT)"),
                    ("currency", "lower(payload->>'$.currency')"),
                    ("payment_method_id", "stripe_id(payload->'$.payment_method')"),
                    ("latest_charge_id", "stripe_id(payload->'$.latest_charge')"),
                    ("last_error_code", "payload->>'$.last_payment_error.code'"),
                    ("last_decline_code", "payload->>'$.last_payment_error.decline_code'"),
                    ("last_advice_code", "payload->>'$.last_payment_error.advice_code'"),
                    ("last_error_charge_id", "stripe_id(payload->'$.last_payment_error.charge')"),
                    (
                        "last_error_payment_method_id",
                        "stripe_id(payload->'$.last_payment_error.payment_method')",
                    ),
                    ("canceled_at", "stripe_ts(payload->'$.canceled_at')"),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                ),
            ),
        ),
    ),
    Stream(
        "refund",
        "/v1/refunds",
        windowed=True,
        id_prefix="re_",
        core=(
            CoreTable(
                "core_refunds",
                key="refund_id",
                columns=(
                    ("refund_id", "id"),
                    ("charge_id", "stripe_id(payload->'$.charge')"),
                    ("amount", "CAST(payload->>'$.amount' AS BIGINT)"),
                    ("currency", "lower(payload->>'$.currency')"),
                    ("status", "payload->>'$.status'"),
                    ("reason", "payload->>'$.reason'"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                ),
            ),
        ),
    ),
    # Never listed (a listing needs a customer): embedded in customers and
    # subscriptions, or by event. A legacy card or source is a payment method too; a
    # PaymentMethod keeps its card under `card`, a legacy card source is the card.
    Stream(
        "payment_method",
        None,
        id_prefix="pm_",
        aliases=("card", "source"),
        resource="payment_methods",
        core=(
            CoreTable(
                "core_payment_methods",
                key="payment_method_id",
                columns=(
                    ("payment_method_id", "id"),
                    ("customer_id", "stripe_id(payload->'$.customer')"),
                    ("type", "coalesce(payload->>'$.type', payload->>'$.object')"),
                    ("card_brand", "coalesce(payload->>'$.card.brand', payload->>'$.brand')"),
                    ("card_last4", "coalesce(payload->>'$.card.last4', payload->>'$.last4')"),
                    (
                        "card_exp_month",
                        "TRY_CAST(coalesce(payload->>'$.card.exp_month', payload->>'$.exp_month') AS INTEGER)",
                    ),
                    (
                        "card_exp_year",
                        "TRY_CAST(coalesce(payload->>'$.card.exp_year', payload->>'$.exp_year') AS INTEGER)",
                    ),
                    ("livemode", "livemode"),
                    ("created_at", "stripe_ts(payload->'$.created')"),
                    (
                        "is_deleted",
                        "is_deleted OR coalesce(TRY_CAST(payload->>'$.deleted' AS BOOLEAN), FALSE)",
                    ),
                ),
                source="FROM raw_stripe_payment_method WHERE __SCOPE__",
            ),
        ),
    ),
    # Never listed ("Discounts cannot be fetched by ID"): expanded in the subscription
    # listing, or by event (customer.discount.created/updated/deleted). Filled into
    # core_subscription_discounts through the subscription that names it.
    Stream(
        "discount",
        None,
        id_prefix="di_",
        resource="discounts",
    ),
)
STREAMS_BY_NAME = {s.name: s for s in STREAMS}
#: The streams the backfill and the reconciliation list, in order.
LISTED: tuple[Stream, ...] = tuple(s for s in STREAMS if s.path)

#: Every raw table an object can land in.
RAW_OBJECTS: tuple[str, ...] = tuple(s.name for s in STREAMS)

#: An object's ``object`` value -> the stream (table suffix) it lands in.
OBJECT_TABLES: dict[str, str] = {alias: s.name for s in STREAMS for alias in (s.name, *s.aliases)}

#: Every core table, in declaration order, with its stream.
CORE_TABLES: tuple[tuple[Stream, CoreTable], ...] = tuple((s, c) for s in STREAMS for c in s.core)

#: Nested lists that belong to other streams: dropped from a payload once their
#: payment methods are taken out, so a payload changes only when its own object does.
_FOREIGN_LISTS = ("subscriptions", "sources")
#: Streams whose objects, found expanded in another payload, land in their own table.
_EMBEDDED = ("payment_method", "discount")


def embedded_table(obj: dict[str, Any]) -> str:
    """The stream an object :func:`flatten` took out of a payload lands in."""
    return OBJECT_TABLES[obj["object"]]


#: What parsed JSON nests in (the SDK's ``OrderedDict`` is a dict).
_CONTAINERS: tuple[type, ...] = (dict, list)


def flatten(obj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Un-expand one payload: embedded objects become their ids again.

    Returns the payload as an event would carry it, and the embedded objects that land
    in tables of their own (payment methods, legacy cards, discounts: see
    :func:`embedded_table`), so a listed payload and an event payload of the same state
    compare equal.
    """
    out: dict[str, Any] = {}
    embedded: list[dict[str, Any]] = []
    for key, field_value in obj.items():
        if not isinstance(field_value, _CONTAINERS):
            # most of a payload's fields: nothing embedded (checked first: this runs for
            # every field of every object a backfill lands)
            out[key] = field_value
            continue
        value: Any = field_value  # a dict or a list, read by the rules below
        if key in _FOREIGN_LISTS and isinstance(value, dict) and value.get("object") == "list":
            embedded.extend(_payment_methods(value.get("data") or []))
            continue
        if _is_object(value) and value["object"] in OBJECT_TABLES:
            if OBJECT_TABLES.get(value["object"]) in _EMBEDDED:
                embedded.append(value)
            out[key] = value["id"]
        elif key == "discounts" and isinstance(value, list):
            # expanded discounts (a list of ids unless expanded, since basil)
            found = [d for d in value if _is_object(d) and d["object"] == "discount"]
            embedded.extend(found)
            out[key] = [d["id"] if _is_object(d) and d["object"] == "discount" else d
                        for d in value]  # fmt: skip
        elif key == "invoice_settings" and isinstance(value, dict):
            inner = dict(value)
            pm = inner.get("default_payment_method")
            if isinstance(pm, dict) and _is_object(pm):
                embedded.append(pm)
                inner["default_payment_method"] = pm["id"]
            out[key] = inner
        else:
            out[key] = value
    return out, embedded


def _is_object(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), str)
        and isinstance(value.get("object"), str)
        and value["object"] != "list"
    )


def _payment_methods(items: list[Any]) -> list[dict[str, Any]]:
    return [
        i for i in items if _is_object(i) and OBJECT_TABLES.get(i["object"]) == "payment_method"
    ]
