-- Raw landing tables, sync state, quarantine and the run log.
-- Timestamps are TIMESTAMP columns holding UTC (no local time anywhere in the warehouse).

-- One table per Stripe object: the latest payload of every object.
-- version_ts/version_seq order the versions of one object: an event's `created` for event
-- payloads, the fetch time for list payloads; a payload replaces the stored one only when
-- it is newer (newer-over-older), so duplicates and out-of-order events change nothing.
CREATE TABLE raw_stripe_customer (
    id VARCHAR PRIMARY KEY, payload JSON NOT NULL, api_version VARCHAR, source VARCHAR NOT NULL,
    version_ts TIMESTAMP NOT NULL, version_seq BIGINT NOT NULL DEFAULT 0,
    fetched_at TIMESTAMP NOT NULL, is_deleted BOOLEAN NOT NULL DEFAULT FALSE, livemode BOOLEAN
);
CREATE TABLE raw_stripe_subscription AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE TABLE raw_stripe_invoice AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE TABLE raw_stripe_charge AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE TABLE raw_stripe_refund AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE TABLE raw_stripe_payment_method AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE TABLE raw_stripe_price AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE TABLE raw_stripe_product AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE TABLE raw_stripe_coupon AS SELECT * FROM raw_stripe_customer WITH NO DATA;

-- Every event once, append-only.
CREATE TABLE raw_stripe_event (
    id VARCHAR PRIMARY KEY,
    type VARCHAR NOT NULL,
    created TIMESTAMP NOT NULL,
    api_version VARCHAR,
    object_type VARCHAR,
    object_id VARCHAR,
    livemode BOOLEAN,
    payload JSON NOT NULL,
    fetched_at TIMESTAMP NOT NULL
);
CREATE INDEX raw_stripe_event_object ON raw_stripe_event (object_id);

-- Salesforce records as the org returned them.
CREATE TABLE raw_sf_account (
    id VARCHAR PRIMARY KEY, payload JSON NOT NULL, system_modstamp TIMESTAMP NOT NULL,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE, fetched_at TIMESTAMP NOT NULL
);
CREATE TABLE raw_sf_opportunity AS SELECT * FROM raw_sf_account WITH NO DATA;
CREATE TABLE raw_sf_contact AS SELECT * FROM raw_sf_account WITH NO DATA;
CREATE TABLE raw_sf_user AS SELECT * FROM raw_sf_account WITH NO DATA;
CREATE TABLE raw_sf_task AS SELECT * FROM raw_sf_account WITH NO DATA;
CREATE TABLE raw_sf_currencytype AS SELECT * FROM raw_sf_account WITH NO DATA;

-- One cursor per stream, written in the same transaction as the rows it covers.
CREATE TABLE sync_state (
    stream VARCHAR PRIMARY KEY,
    cursor VARCHAR,
    cursor_ts TIMESTAMP,
    details JSON,
    updated_at TIMESTAMP NOT NULL
);

-- Bad input, with the reason. One row per (source, stream, object): re-quarantining the
-- same object on a rerun replaces the row instead of duplicating it.
CREATE TABLE quarantine (
    source VARCHAR NOT NULL,
    stream VARCHAR NOT NULL,
    object_id VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    payload JSON,
    run_id VARCHAR,
    quarantined_at TIMESTAMP NOT NULL,
    PRIMARY KEY (source, stream, object_id)
);

-- One row per command run (extract, score, push, run).
CREATE TABLE run_log (
    run_id VARCHAR PRIMARY KEY,
    command VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status VARCHAR NOT NULL,  -- running | success | partial | failed
    counts JSON,
    api_calls JSON,
    durations JSON,
    error VARCHAR
);
