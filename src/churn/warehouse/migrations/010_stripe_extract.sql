-- The Stripe extract's own bookkeeping (engineer "stripe", range 010-019).

-- Every version of every subscription the extract has seen (event payloads and list
-- snapshots), so the history can be rebuilt from scratch at any time. One row per
-- (subscription, version_key): an event id, or 'list:' plus the payload's hash, so a
-- rerun that sees the same state again adds nothing.
CREATE TABLE stripe_subscription_versions (
    subscription_id VARCHAR NOT NULL,
    version_key VARCHAR NOT NULL,
    version_ts TIMESTAMP NOT NULL,
    version_seq BIGINT NOT NULL,
    source VARCHAR NOT NULL,
    payload JSON NOT NULL,
    PRIMARY KEY (subscription_id, version_key)
);

-- An id (string) or an expanded object's id.
CREATE MACRO stripe_id(j) AS
    CASE WHEN json_type(j) = 'OBJECT' THEN json_extract_string(j, '$.id')
         ELSE json_extract_string(j, '$') END;

-- A Unix timestamp (seconds) as naive UTC.
CREATE MACRO stripe_ts(j) AS
    CASE WHEN json_extract_string(j, '$') IS NULL THEN NULL
         ELSE make_timestamp(CAST(json_extract_string(j, '$') AS BIGINT) * 1000000) END;

-- 001 made the other raw tables with CREATE TABLE AS, which copies no key: the
-- newer-over-older upsert (INSERT ... ON CONFLICT (id)) needs one on every table.
CREATE UNIQUE INDEX raw_stripe_subscription_id ON raw_stripe_subscription (id);
CREATE UNIQUE INDEX raw_stripe_invoice_id ON raw_stripe_invoice (id);
CREATE UNIQUE INDEX raw_stripe_charge_id ON raw_stripe_charge (id);
CREATE UNIQUE INDEX raw_stripe_refund_id ON raw_stripe_refund (id);
CREATE UNIQUE INDEX raw_stripe_payment_method_id ON raw_stripe_payment_method (id);
CREATE UNIQUE INDEX raw_stripe_price_id ON raw_stripe_price (id);
CREATE UNIQUE INDEX raw_stripe_product_id ON raw_stripe_product (id);
CREATE UNIQUE INDEX raw_stripe_coupon_id ON raw_stripe_coupon (id);
