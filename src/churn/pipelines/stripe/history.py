"""The subscription history: validity intervals built from every version seen.

Versions are the event payloads and list snapshots kept in
``stripe_subscription_versions``. Ordered by (version_ts, version_seq, version_key), the
state of each version (the columns of ``history_subscriptions``; the set of items with
their price and quantity) starts an interval that lasts until the next version whose
state differs; consecutive versions in the same state merge. The earliest known state is
taken to hold from the subscription's ``created`` time (nothing earlier is knowable),
with one inference: a subscription first seen already canceled (a backfill of an old
account) was active, with the same items, from ``created`` until it ended
(``ended_at``, else ``canceled_at``), so churn before the first extract is not lost.
A version that lands late or twice changes nothing: the build is a pure function of the
set of versions, in SQL, redone for the subscriptions with a new version or raw row
(``stripe_dirty``), or for all.
"""

from __future__ import annotations

import duckdb

from churn.pipelines.stripe.normalise import dirty

_ITEMS = "CAST(payload->'$.items.data' AS JSON[])"

_VERSIONS = f"""
    CREATE OR REPLACE TEMP TABLE _sub_versions AS
    WITH v AS (
        SELECT subscription_id, version_ts, version_seq, version_key, payload
        FROM stripe_subscription_versions s
        WHERE __SCOPE__ AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.source = 'stripe'
                          AND q.stream = 'subscription' AND q.object_id = s.subscription_id)
          -- an older version the quarantine rule would refuse (the latest one passed)
          AND stripe_id(payload->'$.customer') IS NOT NULL AND payload->>'$.status' IS NOT NULL
        -- several versions in one instant: the greatest one stands for it
        QUALIFY row_number() OVER (PARTITION BY subscription_id, version_ts
                                   ORDER BY version_seq DESC, version_key DESC) = 1
    )
    , s AS (
    SELECT subscription_id, version_ts,
           version_ts = min(version_ts) OVER (PARTITION BY subscription_id) AS is_first,
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
           {_ITEMS} AS items
    FROM v
    ), inferred AS (
        SELECT *, is_first AND status = 'canceled'
                  AND coalesce(ended_at, canceled_at) > created_at AS ended_unseen
        FROM s
    ), versions AS (
        -- the first state seen, or from when it ended if it was seen canceled
        SELECT * REPLACE (CASE WHEN ended_unseen
                               THEN least(version_ts, coalesce(ended_at, canceled_at))
                               ELSE version_ts END AS version_ts)
        FROM inferred
        UNION ALL
        -- before it ended: active, with the same items
        SELECT * REPLACE (created_at AS version_ts, 'active' AS status,
                          NULL::TIMESTAMP AS canceled_at, NULL::TIMESTAMP AS ended_at)
        FROM inferred WHERE ended_unseen
    )
    , distinct_instants AS (
        SELECT * EXCLUDE (is_first) FROM versions
        QUALIFY row_number() OVER (PARTITION BY subscription_id, version_ts
                                   ORDER BY ended_unseen) = 1
    )
    SELECT * EXCLUDE (ended_unseen),
           row_number() OVER (PARTITION BY subscription_id ORDER BY version_ts) AS n
    FROM distinct_instants
"""

# Each version's start: its own time, the first one's pulled back to `created`.
_START = (
    "CASE WHEN n = 1 THEN least(version_ts, coalesce(created_at, version_ts)) ELSE version_ts END"
)

_SUBSCRIPTIONS = f"""
    INSERT INTO history_subscriptions
    WITH s AS (
        SELECT *, {_START} AS starts,
               md5(concat_ws('|', customer_id, status, currency, collection_method,
                             cancel_at_period_end, cancel_at, canceled_at, ended_at,
                             current_period_start, current_period_end, trial_end,
                             default_payment_method)) AS state
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
           trial_end, default_payment_method
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


def build_history(con: duckdb.DuckDBPyConnection, *, full: bool = False) -> int:
    """Rebuild the history of the dirty subscriptions (``full``: of all), inside the
    caller's transaction; returns the number of intervals in the table.

    Every window above is per subscription, so rebuilding a subset gives the rows a whole
    rebuild would give for it.
    """
    if full:
        con.execute(_VERSIONS.replace("__SCOPE__", "TRUE"))
        con.execute("DELETE FROM history_subscriptions")
        con.execute("DELETE FROM history_subscription_items")
    else:
        con.execute(_VERSIONS.replace("__SCOPE__", dirty("subscription", "s.subscription_id")))
        for table in ("history_subscriptions", "history_subscription_items"):
            con.execute(f"DELETE FROM {table} WHERE {dirty('subscription', 'subscription_id')}")
    con.execute(_SUBSCRIPTIONS)
    con.execute(_ITEMS_HISTORY)
    con.execute("DROP TABLE _sub_versions")
    row = con.execute("SELECT count(*) FROM history_subscriptions").fetchone()
    return int(row[0]) if row else 0
