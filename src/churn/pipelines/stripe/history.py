"""The subscription history: validity intervals built from every version known.

Versions are the event payloads and list snapshots kept in
``stripe_subscription_versions``, and, for the time before a subscription was first seen,
its invoices: each billed period's lines (item, price, quantity, ``period``; both the
current ``parent.subscription_item_details``/``pricing`` shape and the older top-level
one) give its items from the period's start, in the first seen state made ``active``
(``trialing`` inside ``trial_end``). A change mid-period is billed on the next invoice as
two proration lines; the "remaining time" one (not negative) gives the changed item's
new price and quantity from its ``period.start``, the change's time. So the first run
already has the seats and plans of every period back to the first invoice.

Ordered by (version_ts, version_seq, version_key), the state of each version (the
columns of ``history_subscriptions``; the set of items with their price and quantity)
starts an interval that lasts until the next version whose state differs; consecutive
versions in the same state merge. Written rules for the first version seen:

- read in a list: it holds since the last period billed before it (the listing's own
  time says only when it was read), else since ``created``;
- read in an event: it holds from the event (the change it records);
- seen already canceled: canceled from when it ended (``ended_at``, else
  ``canceled_at``); before that, the billed periods, or (with no invoice) active with the
  same items from ``created``, so churn before the first extract is not lost; one that
  was canceled at period end (or at ``cancel_at``) was scheduled to cancel from
  ``canceled_at``, the time of the request, until it ended; one seen still cancelling
  was not cancelling before its request either.
- ``pause_collection`` (behavior, ``resumes_at``) is part of the state; the versions made
  from invoices are not paused (when a pause began is known only from events).

A version that lands late or twice changes nothing: the build is a pure function of the
set of versions and invoices, in SQL, redone for the subscriptions with a new version or
raw row (``stripe_dirty``), or for all.

What changes in place on a customer or a card is versioned the same way
(:func:`build_in_place_history`, run by :func:`build_history`):
``history_customer_defaults`` (``invoice_settings.default_payment_method``,
``default_source``) and ``history_payment_methods`` (owner, card expiry), from every event
kept in ``raw_stripe_event`` and the latest raw row.
"""

from __future__ import annotations

import duckdb

from churn.pipelines.stripe.normalise import Span, dirty, dirty_ids, parsed_once, spans, typed
from churn.pipelines.stripe.streams import LINE_SUBSCRIPTION
from churn.warehouse import rows_where

_ITEMS = "CAST(payload->'$.items.data' AS JSON[])"

# An invoice line's subscription item, price and proration flag, in both shapes: since
# 2025-03-31.basil under `parent.subscription_item_details` and `pricing.price_details`;
# before, `subscription_item`, `price` (or `plan`) and `proration` at the top.
_LINE_ITEM = "coalesce(l->>'$.parent.subscription_item_details.subscription_item', stripe_id(l->'$.subscription_item'))"
_LINE_PRICE = (
    "coalesce(l->>'$.pricing.price_details.price', stripe_id(l->'$.price'), stripe_id(l->'$.plan'))"
)
_LINE_PRORATION = (
    "coalesce(TRY_CAST(l->>'$.parent.subscription_item_details.proration' AS BOOLEAN), "
    "TRY_CAST(l->>'$.proration' AS BOOLEAN), FALSE)"
)
# (a line naming no subscription is its invoice's; core_invoices.other_subscriptions
# reads lines by the same rule)
_LINE_SUBSCRIPTION = f"coalesce({LINE_SUBSCRIPTION}, i.subscription_id)"

#: Every invoice's lines, as the history reads them (``lines`` below); each line's
#: fields read from it parsed once or twice, not once a field (parsed_once).
_LINE_FIELDS, _LINE_LISTS = parsed_once(
    [_LINE_SUBSCRIPTION, "stripe_ts(l->'$.period.start')", "stripe_ts(l->'$.period.end')",
     _LINE_ITEM, _LINE_PRICE, "TRY_CAST(l->>'$.quantity' AS BIGINT)", _LINE_PRORATION,
     "TRY_CAST(l->>'$.amount' AS BIGINT)"],
    doc="l",
)  # fmt: skip
#: The payloads of the invoices and versions a rebuild reads, not every row's (rows_where).
_INVOICE_PAYLOADS = rows_where(
    "raw_stripe_invoice", "id IN (SELECT i.invoice_id FROM core_invoices i WHERE __INVOICES__)"
)
_VERSION_PAYLOADS = rows_where("__VERSION_ROWS__", "__SCOPE__")

_LINES = f"""
        SELECT {_LINE_FIELDS[0]} AS subscription_id, i.invoice_id,
               {_LINE_FIELDS[1]} AS period_start, {_LINE_FIELDS[2]} AS period_end,
               {_LINE_FIELDS[3]} AS item_id, {_LINE_FIELDS[4]} AS price_id,
               {_LINE_FIELDS[5]} AS quantity, {_LINE_FIELDS[6]} AS proration,
               {_LINE_FIELDS[7]} AS amount
        FROM (SELECT *, {_LINE_LISTS} FROM (
              SELECT i.invoice_id, i.subscription_id,
                     unnest(CAST(r.payload->'$.lines.data' AS JSON[])) AS l
              FROM core_invoices i
              JOIN {_INVOICE_PAYLOADS} r ON r.id = i.invoice_id
              WHERE i.subscription_id IS NOT NULL AND i.status IS DISTINCT FROM 'draft'
                AND NOT i.is_deleted AND __INVOICES__) i) i
"""
#: The invoices whose lines can belong to a dirty subscription: its own, and those whose
#: lines name another subscription (or not known: a row from before migration 109). The
#: lines are then kept by their own subscription; this only spares unnesting the rest.
_DIRTY_INVOICES = (
    f"({dirty('subscription', 'i.subscription_id')} OR i.other_subscriptions IS NULL "
    "OR len(i.other_subscriptions) > 0)"
)


def _lines(invoices: str) -> str:
    return _LINES.replace("__INVOICES__", invoices)


_VERSIONS = f"""
    CREATE OR REPLACE TEMP TABLE _sub_versions AS
    WITH observed AS (
        SELECT subscription_id, version_ts, version_seq, version_key, payload, source
        -- ``__SCOPE__`` names its columns bare (rows_where)
        FROM {_VERSION_PAYLOADS} s
        WHERE NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = 'stripe'
                          AND q.stream = 'subscription' AND q.object_id = s.subscription_id)
          -- an older version the quarantine rule would refuse (the latest one passed)
          AND stripe_id(payload->'$.customer') IS NOT NULL AND payload->>'$.status' IS NOT NULL
          AND NOT coalesce(({typed("subscription")}), FALSE)
    ), first_seen AS (
        SELECT subscription_id, min(version_ts) AS first_ts,
               arg_min(payload, (version_ts, version_seq, version_key)) AS payload,
               arg_min(source, (version_ts, version_seq, version_key)) AS source
        FROM observed GROUP BY subscription_id
    ), lines AS (
        -- what each period's invoice billed: the items and seats in force at its start
        __LINES__
    ), billed AS (
        SELECT subscription_id, invoice_id, min(period_start) AS period_start,
               max(period_end) AS period_end,
               to_json(list(json_object('id', item_id, 'price', price_id,
                                        'quantity', quantity) ORDER BY item_id)) AS items
        FROM lines WHERE NOT proration AND item_id IS NOT NULL AND price_id IS NOT NULL
        GROUP BY ALL
    ), billed_one AS (
        -- one invoice per period start (a metered line billed in arrears starts where the
        -- previous invoice did): the greatest id, as latest_per_instant prefers, where a
        -- join or arg_min over ties would take whichever row a thread met first
        SELECT * FROM billed
        QUALIFY row_number() OVER (PARTITION BY subscription_id, period_start
                                   ORDER BY invoice_id DESC) = 1
    ), prorated AS (
        -- A change mid-period: its "remaining time" line (not negative; the "unused
        -- time" one is) names the item's new price and quantity from the change on; the
        -- other items are the period's billed ones.
        SELECT pr.subscription_id, pr.invoice_id || ':' || pr.item_id AS invoice_id,
               pr.period_start, b.period_end,
               to_json(list_append(
                   list_filter(CAST(b.items AS JSON[]), lambda x: x->>'$.id' <> pr.item_id),
                   json_object('id', pr.item_id, 'price', pr.price_id,
                               'quantity', pr.quantity))) AS items
        FROM (SELECT * FROM lines WHERE proration AND coalesce(amount, 0) >= 0
                AND item_id IS NOT NULL AND price_id IS NOT NULL) pr
        ASOF JOIN billed_one b
          ON pr.subscription_id = b.subscription_id AND pr.period_start >= b.period_start
        WHERE pr.period_start > b.period_start
    ), periods AS (
        SELECT * FROM billed UNION ALL SELECT * FROM prorated
    ), anchors AS (
        -- A first state seen in a list holds since the last period billed before it (a
        -- snapshot's own time is only when it was read); one seen canceled keeps its
        -- end, and one seen in an event its event's time (the change it records).
        -- (the first state's fields read here, once a subscription, not once a period)
        SELECT f.subscription_id, f.first_ts, f.payload, f.first_currency, f.first_trial_end,
               max(b.period_start) FILTER (WHERE b.period_start < f.first_ts
                                             AND f.first_status <> 'canceled'
                                             AND f.source <> 'event') AS held_since,
               max(b.period_end) FILTER (WHERE b.period_start < f.first_ts) AS last_billed_end
        FROM (SELECT *, payload->>'$.status' AS first_status,
                     lower(coalesce(payload->>'$.currency', payload->>'$.plan.currency',
                                    {_ITEMS}[1]->>'$.price.currency',
                                    {_ITEMS}[1]->>'$.plan.currency')) AS first_currency,
                     stripe_ts(payload->'$.trial_end') AS first_trial_end
              FROM first_seen) f
        LEFT JOIN periods b USING (subscription_id)
        GROUP BY ALL
    ), invoiced AS (
        -- one version per billed period before that: the first seen state, active
        -- (trialing inside its trial), with the items and seats billed
        SELECT a.subscription_id, b.period_start AS version_ts, -1 AS version_seq,
               'invoice:' || b.invoice_id AS version_key,
               json_merge_patch(a.payload, json_object(
                   'currency', a.first_currency,
                   'status', CASE WHEN a.first_trial_end > b.period_start
                                  THEN 'trialing' ELSE 'active' END,
                   'cancel_at_period_end', FALSE, 'cancel_at', NULL, 'canceled_at', NULL,
                   'ended_at', NULL, 'pause_collection', NULL,
                   'current_period_start', epoch(b.period_start)::BIGINT,
                   'current_period_end', epoch(b.period_end)::BIGINT,
                   'items', json_object('data', b.items))) AS payload
        FROM periods b JOIN anchors a USING (subscription_id)
        WHERE b.period_start < coalesce(a.held_since, a.first_ts)
        UNION ALL
        -- a trial before the first period billed: trialing from its start, with the
        -- items the first invoice billed (a trial bills nothing)
        SELECT a.subscription_id, t.trial_start, -1, 'trial:' || a.subscription_id,
               json_merge_patch(a.payload, json_object(
                   'status', 'trialing', 'cancel_at_period_end', FALSE, 'cancel_at', NULL,
                   'canceled_at', NULL, 'ended_at', NULL, 'pause_collection', NULL,
                   'current_period_start', epoch(t.trial_start)::BIGINT,
                   'current_period_end', epoch(t.trial_end)::BIGINT,
                   'items', coalesce(json_object('data', t.first_items),
                                     a.payload->'$.items')))
        FROM anchors a
        JOIN (SELECT f.subscription_id,
                     coalesce(stripe_ts(f.payload->'$.trial_start'),
                              stripe_ts(f.payload->'$.created')) AS trial_start,
                     stripe_ts(f.payload->'$.trial_end') AS trial_end,
                     (SELECT arg_min(b.items, b.period_start) FROM billed_one b
                      WHERE b.subscription_id = f.subscription_id) AS first_items,
                     (SELECT min(b.period_start) FROM billed b
                      WHERE b.subscription_id = f.subscription_id) AS first_billed
              FROM first_seen f) t USING (subscription_id)
        WHERE t.trial_end > t.trial_start
          AND t.trial_start < least(coalesce(t.first_billed, a.first_ts),
                                    coalesce(a.held_since, a.first_ts))
    ), v AS (
        SELECT o.subscription_id,
               CASE WHEN o.version_ts <> a.first_ts THEN o.version_ts
                    WHEN a.held_since IS NOT NULL THEN a.held_since
                    -- seen canceled in a list: canceled from when it ended (else from the
                    -- end of its last billed period), not from when it was read
                    WHEN o.source <> 'event' AND o.payload->>'$.status' = 'canceled'
                    THEN least(o.version_ts, coalesce(stripe_ts(o.payload->'$.ended_at'),
                                                      stripe_ts(o.payload->'$.canceled_at'),
                                                      a.last_billed_end, o.version_ts))
                    ELSE o.version_ts END AS version_ts,
               o.version_seq, o.version_key, o.payload, FALSE AS from_invoice
        FROM observed o JOIN anchors a USING (subscription_id)
        UNION ALL
        SELECT *, TRUE FROM invoiced
    ), latest_per_instant AS (
        SELECT * FROM v
        -- several versions in one instant: an observed one over an invoice's, then the
        -- greatest
        QUALIFY row_number() OVER (PARTITION BY subscription_id, version_ts
                                   ORDER BY from_invoice, version_seq DESC,
                                            version_key DESC) = 1
    )
    , s AS (
    SELECT subscription_id, version_ts, from_invoice,
           NOT from_invoice AND version_ts = min(version_ts) FILTER (WHERE NOT from_invoice)
               OVER (PARTITION BY subscription_id) AS is_first,
           bool_or(from_invoice) OVER (PARTITION BY subscription_id) AS has_invoiced,
           stripe_ts(payload->'$.created') AS created_at,
           stripe_id(payload->'$.customer') AS customer_id,
           payload->>'$.status' AS status,
           lower(coalesce(payload->>'$.currency', payload->>'$.plan.currency',
                          {_ITEMS}[1]->>'$.price.currency',
                          {_ITEMS}[1]->>'$.plan.currency')) AS currency,
           payload->>'$.collection_method' AS collection_method,
           coalesce(TRY_CAST(payload->>'$.cancel_at_period_end' AS BOOLEAN), FALSE)
               AS cancel_at_period_end,
           stripe_ts(payload->'$.cancel_at') AS cancel_at,
           stripe_ts(payload->'$.canceled_at') AS canceled_at,
           stripe_ts(payload->'$.ended_at') AS ended_at,
           coalesce(stripe_ts(payload->'$.current_period_start'),
                    list_min(list_transform({_ITEMS},
                             lambda i: stripe_ts(i->'$.current_period_start'))))
               AS current_period_start,
           coalesce(stripe_ts(payload->'$.current_period_end'),
                    list_min(list_transform({_ITEMS},
                             lambda i: stripe_ts(i->'$.current_period_end'))))
               AS current_period_end,
           stripe_ts(payload->'$.trial_end') AS trial_end,
           stripe_id(payload->'$.default_payment_method') AS default_payment_method,
           stripe_id(payload->'$.default_source') AS default_source,
           payload->>'$.pause_collection.behavior' AS pause_behavior,
           stripe_ts(payload->'$.pause_collection.resumes_at') AS pause_resumes_at,
           {_ITEMS} AS items
    FROM latest_per_instant
    ), inferred AS (
        SELECT *, is_first AND status = 'canceled'
                  AND coalesce(ended_at, canceled_at) > created_at AS ended_unseen,
                  -- first seen cancelling, the request (canceled_at) after the time it
                  -- is taken to hold from: cancelling only from the request
                  coalesce(is_first AND status <> 'canceled'
                           AND (cancel_at_period_end OR cancel_at IS NOT NULL)
                           AND canceled_at > greatest(version_ts, created_at), FALSE)
                      AS scheduled_later
        FROM s
    ), versions AS (
        -- the first state seen, or from when it ended if it was seen canceled
        SELECT * REPLACE (CASE WHEN ended_unseen
                               THEN least(version_ts, coalesce(ended_at, canceled_at))
                               WHEN scheduled_later THEN canceled_at
                               ELSE version_ts END AS version_ts)
        FROM inferred
        UNION ALL
        -- before that request: the same state, not cancelling
        SELECT * REPLACE (FALSE AS cancel_at_period_end, NULL::TIMESTAMP AS cancel_at,
                          NULL::TIMESTAMP AS canceled_at)
        FROM inferred WHERE scheduled_later
        UNION ALL
        -- before it ended: active, with the same items (when no invoice says otherwise)
        SELECT * REPLACE (created_at AS version_ts, 'active' AS status,
                          NULL::TIMESTAMP AS canceled_at, NULL::TIMESTAMP AS ended_at)
        FROM inferred WHERE ended_unseen AND NOT has_invoiced
        UNION ALL
        -- a cancellation scheduled before it ended: Stripe's canceled_at "will reflect the
        -- time of the most recent update request" when it was canceled at period end
        SELECT * REPLACE (canceled_at AS version_ts, 'active' AS status,
                          NULL::TIMESTAMP AS ended_at,
                          coalesce(ended_at, current_period_end) AS current_period_end)
        FROM inferred
        WHERE ended_unseen AND (cancel_at_period_end OR cancel_at IS NOT NULL)
          AND canceled_at > created_at AND canceled_at < coalesce(ended_at, canceled_at)
    )
    , distinct_instants AS (
        SELECT * EXCLUDE (is_first, from_invoice, has_invoiced, scheduled_later) FROM versions
        QUALIFY row_number() OVER (PARTITION BY subscription_id, version_ts
                                   ORDER BY from_invoice, ended_unseen) = 1
    )
    SELECT * EXCLUDE (ended_unseen),
           row_number() OVER (PARTITION BY subscription_id ORDER BY version_ts) AS n
    FROM distinct_instants
"""

# The state columns read from each version's payload parsed once (parsed_once).
_HEAD, _REST = _VERSIONS.split("    , s AS (\n    SELECT ", 1)
_SELECT, _TAIL = _REST.split("\n    FROM latest_per_instant\n", 1)
(_SELECT,), _LISTS = parsed_once([_SELECT])
_VERSIONS = (
    f"{_HEAD}    , s AS (\n    SELECT {_SELECT}\n"
    f"    FROM (SELECT *, {_LISTS} FROM latest_per_instant)\n{_TAIL}"
)

# Each version's start: its own time, the first one's pulled back to `created`.
_START = (
    "CASE WHEN n = 1 THEN least(version_ts, coalesce(created_at, version_ts)) ELSE version_ts END"
)

_SUBSCRIPTIONS = f"""
    INSERT INTO history_subscriptions (subscription_id, valid_from, valid_to, customer_id,
        status, currency, collection_method, cancel_at_period_end, cancel_at, canceled_at,
        ended_at, current_period_start, current_period_end, trial_end, default_payment_method,
        default_source, pause_behavior, pause_resumes_at)
    WITH s AS (
        SELECT *, {_START} AS starts,
               md5(concat_ws('|', customer_id, status, currency, collection_method,
                             cancel_at_period_end, cancel_at, canceled_at, ended_at,
                             current_period_start, current_period_end, trial_end,
                             default_payment_method, default_source, pause_behavior,
                             pause_resumes_at)) AS state
        FROM _sub_versions
    ), changes AS (
        SELECT * FROM s
        QUALIFY state IS DISTINCT FROM
                lag(state) OVER (PARTITION BY subscription_id ORDER BY n)
    )
    SELECT subscription_id, starts,
           lead(starts) OVER (PARTITION BY subscription_id ORDER BY n),
           customer_id, status, currency, collection_method, cancel_at_period_end,
           cancel_at, canceled_at, ended_at, current_period_start, current_period_end,
           trial_end, default_payment_method, default_source, pause_behavior, pause_resumes_at
    FROM changes
"""

_ITEMS_HISTORY = f"""
    INSERT INTO history_subscription_items
    WITH v AS (SELECT subscription_id, n, {_START} AS starts, items FROM _sub_versions),
    present AS (
        SELECT subscription_id, n, i->>'$.id' AS item_id,
               coalesce(stripe_id(i->'$.price'), stripe_id(i->'$.plan')) AS price_id,
               TRY_CAST(i->>'$.quantity' AS BIGINT) AS quantity
        FROM (SELECT subscription_id, n, unnest(items) AS i FROM v)
    ),
    grid AS (  -- every version of a subscription, for every item it ever had
        SELECT v.subscription_id, v.n, v.starts, k.item_id, p.price_id, p.quantity,
               concat_ws('|', p.price_id, p.quantity, p.item_id IS NULL) AS state
        FROM v
        JOIN (SELECT DISTINCT subscription_id, item_id FROM present) k USING (subscription_id)
        LEFT JOIN present p
          ON p.subscription_id = v.subscription_id AND p.n = v.n AND p.item_id = k.item_id
    ),
    changes AS (
        SELECT * FROM grid
        QUALIFY state IS DISTINCT FROM
                lag(state) OVER (PARTITION BY subscription_id, item_id ORDER BY n)
    ),
    intervals AS (
        SELECT *, lead(starts) OVER (PARTITION BY subscription_id, item_id ORDER BY n) AS ends
        FROM changes
    )
    SELECT subscription_id, item_id, starts, ends, price_id, quantity
    FROM intervals WHERE price_id IS NOT NULL
"""


# What changes in place on a customer or a payment method, as validity intervals. Each
# payload known is a version: every event's object (Stripe keeps 30 days of them) and the
# latest raw row (a listing, or the newest event). Before the first event seen, its
# `previous_attributes` ("the names of the updated attributes and their values prior to
# the event") patched onto its object give the state before it, from `created`. A card is
# also seen in every charge made with it: `payment_method_details.card` (or a legacy
# `source`) holds its brand, last4 and expiry as they were when charged, back to the first
# charge, so an expiry updated in place before the events Stripe keeps is still dated.
# Versions in the same state merge; the first one holds from `created` (nothing earlier is
# known). Ordered by time, then listing, event, charge, then key.
_IN_PLACE = """
    INSERT INTO {table}
    WITH v AS (
        SELECT object_id AS id, created AS ts, 1 AS rank, id AS k,
               payload->'$.data.object' AS p, type LIKE '%.deleted' AS gone,
               payload->'$.data.previous_attributes' AS prev
        FROM raw_stripe_event
        WHERE object_type IN ({kinds}) AND object_id IS NOT NULL AND object_id IN ({scope})
          AND {object_bounds}
        UNION ALL
        SELECT id, version_ts, 0, '', payload, is_deleted, NULL FROM {raw}
        WHERE id IN ({scope}) AND {id_bounds}
        {extra_versions}
    ), before_first AS (
        -- the state before the earliest event, when that event says what it changed
        SELECT id, coalesce(stripe_ts(p->'$.created'), ts) AS ts, -1 AS rank, 'before' AS k,
               json_merge_patch(p, prev) AS p, FALSE AS gone, NULL AS prev
        FROM (SELECT * FROM v WHERE rank = 1
              QUALIFY row_number() OVER (PARTITION BY id ORDER BY ts, k) = 1)
        WHERE json_type(prev) = 'OBJECT'
    ), s AS (
        SELECT id, ts, rank, k, gone,
               min(stripe_ts(p->'$.created')) OVER (PARTITION BY id) AS created_at,
               {columns}
        FROM (SELECT * FROM v UNION ALL SELECT * FROM before_first)
    ), o AS (
        SELECT *, row_number() OVER (PARTITION BY id ORDER BY ts, rank, k) AS n,
               md5(concat_ws('|', gone, {state})) AS state
        FROM s
    ), instants AS (
        -- several versions in one instant (an event and the state before the next one,
        -- both at `created`; two events of one second): the last of them
        SELECT * FROM (
            SELECT *, CASE WHEN n = 1 THEN least(ts, coalesce(created_at, ts)) ELSE ts END
                          AS starts
            FROM o)
        QUALIFY row_number() OVER (PARTITION BY id, starts ORDER BY n DESC) = 1
    ), changes AS (
        SELECT * FROM instants
        QUALIFY state IS DISTINCT FROM lag(state) OVER (PARTITION BY id ORDER BY n)
    )
    SELECT id, starts, lead(starts) OVER (PARTITION BY id ORDER BY n), {names}{extra}
    FROM changes
"""

# A charge's card (current: payment_method_details.card; older: the source itself).
_CHARGE_PM = "coalesce(stripe_id(payload->'$.payment_method'), stripe_id(payload->'$.source'))"
_CHARGE_CARD = (
    "coalesce(payload->'$.payment_method_details.card', "
    "CASE WHEN json_type(payload->'$.source') = 'OBJECT' THEN payload->'$.source' END)"
)
#: The charges of the payment methods in scope (``{scope}``, as the core rows name them)
#: that carried a card: picked on the typed columns first, and only their payloads read,
#: so a chunk of payment methods reads its own charges, not every charge.
_CARD_CHARGES = rows_where(
    "raw_stripe_charge",
    "id IN (SELECT charge_id FROM core_charges "
    "WHERE payment_method_id IN ({scope}) AND card_exp_year IS NOT NULL)",
)
_CHARGE_VERSIONS = f"""
        UNION ALL
        SELECT {_CHARGE_PM}, stripe_ts(payload->'$.created'), 2, 'charge:' || id,
               json_object('object', 'payment_method', 'type', 'card',
                           'customer', payload->'$.customer',
                           'card', json_object('brand', c->'$.brand', 'last4', c->'$.last4',
                                               'exp_month', c->'$.exp_month',
                                               'exp_year', c->'$.exp_year')),
               FALSE, NULL
        FROM (SELECT r.*, {_CHARGE_CARD} AS c FROM {_CARD_CHARGES} r)
        WHERE c->>'$.exp_year' IS NOT NULL
"""

_CUSTOMER_COLUMNS = (
    ("default_payment_method", "stripe_id(p->'$.invoice_settings.default_payment_method')"),
    ("default_source", "stripe_id(p->'$.default_source')"),
)
_PAYMENT_METHOD_COLUMNS = (
    ("customer_id", "stripe_id(p->'$.customer')"),
    ("type", "coalesce(p->>'$.type', p->>'$.object')"),
    ("card_brand", "coalesce(p->>'$.card.brand', p->>'$.brand')"),
    ("card_last4", "coalesce(p->>'$.card.last4', p->>'$.last4')"),
    (
        "card_exp_month",
        "TRY_CAST(coalesce(p->>'$.card.exp_month', p->>'$.exp_month') AS INTEGER)",
    ),
    ("card_exp_year", "TRY_CAST(coalesce(p->>'$.card.exp_year', p->>'$.exp_year') AS INTEGER)"),
)


def _in_place_sql(
    table: str, stream: str, kinds: tuple[str, ...], columns: tuple[tuple[str, str], ...],
    *, scope: str, with_deleted: bool, extra_versions: str = "", bounds: Span | None = None,
) -> str:  # fmt: skip
    names = ", ".join(n for n, _ in columns)
    return _IN_PLACE.format(
        table=table,
        raw=f"raw_stripe_{stream}",
        kinds=", ".join(f"'{k}'" for k in kinds),
        scope=scope,
        object_bounds=bounds.bounds("object_id", indexed=True) if bounds else "TRUE",
        id_bounds=bounds.bounds("id", indexed=True) if bounds else "TRUE",
        extra_versions=extra_versions.replace("{scope}", scope),
        columns=", ".join(f"{e} AS {n}" for n, e in columns),
        state=names,
        names=names,
        extra=", gone" if with_deleted else "",
    )


def build_in_place_history(con: duckdb.DuckDBPyConnection, *, full: bool = False) -> None:
    """Rebuild ``history_customer_defaults`` and ``history_payment_methods`` for the dirty
    customers and payment methods, and the cards of dirty charges (``full``: all), inside
    the caller's transaction."""
    customers = "SELECT id FROM raw_stripe_customer" if full else (
        "SELECT id FROM stripe_dirty WHERE stream = 'customer'"
    )  # fmt: skip
    # a quarantined customer has no history either (its payload cannot be read)
    customers += (
        " EXCEPT SELECT object_id FROM quarantine WHERE source = 'stripe' AND stream = 'customer'"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _pm_scope AS "
        + (
            "SELECT id FROM raw_stripe_payment_method UNION "
            "SELECT payment_method_id FROM core_charges"
            if full
            else "SELECT id FROM stripe_dirty WHERE stream = 'payment_method' UNION "
            f"SELECT payment_method_id FROM core_charges WHERE {dirty('charge', 'charge_id')}"
        )
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _customer_scope AS " + customers)
    for table, key, scope, sql in (
        ("history_customer_defaults", "customer_id", "_customer_scope",
         _in_place_sql("history_customer_defaults", "customer", ("customer",),
                       _CUSTOMER_COLUMNS, scope="SELECT id FROM _customer_scope",
                       with_deleted=False)),
        ("history_payment_methods", "payment_method_id", "_pm_scope",
         _in_place_sql("history_payment_methods", "payment_method",
                       ("payment_method", "card", "source"), _PAYMENT_METHOD_COLUMNS,
                       scope="SELECT id FROM _pm_scope", with_deleted=True,
                       extra_versions=_CHARGE_VERSIONS)),
    ):  # fmt: skip
        if full:
            con.execute(f"DELETE FROM {table}")
        else:
            con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT id FROM {scope})")
        con.execute(sql)
    con.execute("DROP TABLE _pm_scope")
    con.execute("DROP TABLE _customer_scope")


def build_history(con: duckdb.DuckDBPyConnection, *, full: bool = False) -> int:
    """Rebuild the history of the dirty subscriptions (``full``: of all), inside the
    caller's transaction; returns the number of intervals in the table.

    Every window above is per subscription, so rebuilding a subset gives the rows a whole
    rebuild would give for it.
    """
    if full:
        con.execute(_versions("TRUE", _lines("TRUE")))
        con.execute("DELETE FROM history_subscriptions")
        con.execute("DELETE FROM history_subscription_items")
    else:
        con.execute(_versions(dirty("subscription", "subscription_id"), _lines(_DIRTY_INVOICES)))
        for table in ("history_subscriptions", "history_subscription_items"):
            con.execute(f"DELETE FROM {table} WHERE {dirty('subscription', 'subscription_id')}")
    con.execute(_SUBSCRIPTIONS)
    con.execute(_ITEMS_HISTORY)
    con.execute("DROP TABLE _sub_versions")
    build_in_place_history(con, full=full)
    row = con.execute("SELECT count(*) FROM history_subscriptions").fetchone()
    return int(row[0]) if row else 0


def _versions(scope: str, lines: str, rows: str = "stripe_subscription_versions") -> str:
    """``_sub_versions`` from the versions in ``rows`` (the table, or the chunks' sorted
    copy: :func:`prepare_version_rows`) that ``scope`` holds, and the invoice ``lines``."""
    return (
        _VERSIONS.replace("__SCOPE__", scope)
        .replace("__LINES__", lines)
        .replace("__VERSION_ROWS__", rows)
    )


# -- the same, in chunks (churn.pipelines.stripe.rebuild) -------------------------------


def prepare_chunks(con: duckdb.DuckDBPyConnection) -> None:
    """What every chunk reads, built once from the core tables (normalised first): the
    dirty subscriptions' invoice lines (``_invoice_lines``), and the customers and payment
    methods whose in-place history is to redo (``_customer_scope``, ``_pm_scope``), as
    :func:`build_in_place_history` picks them; each chunk of payment methods reads its own
    charges' cards (``_CHARGE_VERSIONS``: held here for all, they met a 256MB limit at
    100,000 accounts). Temporary tables: a kill loses them, and the rerun builds them
    again."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _invoice_lines AS "
        f"SELECT * FROM ({_lines(_DIRTY_INVOICES)}) l "
        f"WHERE {dirty('subscription', 'l.subscription_id')} ORDER BY subscription_id"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _customer_scope AS "
        "SELECT id FROM stripe_dirty WHERE stream = 'customer' EXCEPT SELECT object_id "
        "FROM quarantine WHERE source = 'stripe' AND stream = 'customer'"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _pm_scope AS "
        "SELECT id FROM stripe_dirty WHERE stream = 'payment_method' UNION "
        f"SELECT payment_method_id FROM core_charges WHERE {dirty('charge', 'charge_id')}"
    )


#: The dirty subscriptions' versions sorted by subscription (:func:`prepare_version_rows`).
VERSION_ROWS = "_version_rows"


def prepare_version_rows(con: duckdb.DuckDBPyConnection) -> None:
    """The dirty subscriptions' versions, every column, in a temporary table sorted by
    subscription: what the history's chunks read when there is more than one.

    ``stripe_subscription_versions`` is in landing order, so a chunk of subscriptions has
    versions in every row group and read its payloads out of the whole column: at 100,000
    accounts 100 chunks of 1,000 subscriptions took 38 s for this read and its JSON (0.38 s
    a chunk). Sorted once, a chunk reads its own rows. A kill loses the table; the rerun
    builds it again."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {VERSION_ROWS} AS SELECT * FROM "
        f"stripe_subscription_versions WHERE {dirty('subscription', 'subscription_id')} "
        "ORDER BY subscription_id"
    )


def drop_chunks(con: duckdb.DuckDBPyConnection) -> None:
    for table in ("_invoice_lines", "_customer_scope", "_pm_scope", VERSION_ROWS):
        con.execute(f"DROP TABLE IF EXISTS {table}")


#: The ids the in-place history's spans are cut from (and one split by), by span stream;
#: after :func:`prepare_chunks`.
IN_PLACE_IDS = {
    "customer": "SELECT id FROM _customer_scope",
    "payment_method": "SELECT id FROM _pm_scope",
}


def subscription_spans(con: duckdb.DuckDBPyConnection, size: int) -> list[Span]:
    return spans(con, "subscription", dirty_ids("subscription"), size)


def in_place_spans(con: duckdb.DuckDBPyConnection, size: int) -> list[Span]:
    """Spans of ``_customer_scope`` (stream ``customer``), then of ``_pm_scope``."""
    return [s for stream, ids in IN_PLACE_IDS.items() for s in spans(con, stream, ids, size)]


def build_subscription_span(
    con: duckdb.DuckDBPyConnection, span: Span, *, sorted_rows: bool = False
) -> None:
    """The history of the dirty subscriptions inside ``span``, as :func:`build_history`
    makes it for all of them (every window is per subscription); the caller's
    transaction, after :func:`prepare_chunks` (``sorted_rows``: and
    :func:`prepare_version_rows`, whose copy holds only dirty subscriptions)."""
    # only the span's lines: every line reaches the result through its own subscription
    lines = f"SELECT * FROM _invoice_lines WHERE {span.bounds('subscription_id')}"
    if sorted_rows:
        con.execute(_versions(span.bounds("subscription_id"), lines, VERSION_ROWS))
    else:
        # (stripe_subscription_versions' primary key leads with subscription_id)
        con.execute(_versions(span.dirty("subscription_id", indexed=True), lines))
    for table in ("history_subscriptions", "history_subscription_items"):
        con.execute(f"DELETE FROM {table} WHERE {span.dirty('subscription_id')}")
    con.execute(_SUBSCRIPTIONS)
    con.execute(_ITEMS_HISTORY)
    con.execute("DROP TABLE _sub_versions")


def build_in_place_span(con: duckdb.DuckDBPyConnection, span: Span) -> None:
    """The in-place history of the customers (``span.stream`` customer) or payment
    methods inside ``span``, as :func:`build_in_place_history` makes it for all in
    scope; the caller's transaction, after :func:`prepare_chunks`."""
    if span.stream == "customer":
        table, key, scope_table = "history_customer_defaults", "customer_id", "_customer_scope"
    else:
        table, key, scope_table = "history_payment_methods", "payment_method_id", "_pm_scope"
    scope = f"SELECT id FROM {scope_table} WHERE {span.bounds('id')}"
    if span.stream == "customer":
        sql = _in_place_sql(table, "customer", ("customer",), _CUSTOMER_COLUMNS, scope=scope,
                            with_deleted=False, bounds=span)  # fmt: skip
    else:
        sql = _in_place_sql(table, "payment_method", ("payment_method", "card", "source"),
                            _PAYMENT_METHOD_COLUMNS, scope=scope, with_deleted=True,
                            extra_versions=_CHARGE_VERSIONS, bounds=span)  # fmt: skip
    con.execute(f"DELETE FROM {table} WHERE {span.bounds(key)} AND {key} IN ({scope})")
    con.execute(sql)
