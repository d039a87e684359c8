-- The Stripe core tables without their primary keys. Core is derived: each rebuild chunk
-- deletes its ids' rows and inserts them again from the raw tables (one row per id by
-- construction, checked by the rebuild tests' duplicate counts), so the keys only cost:
-- DuckDB maintained each one's index on every delete and insert (the core of a
-- 100,000-account backfill took 168 s with them, 102 s without), and an index loaded
-- stays in memory, counted against the extract's memory limit. The key columns stay NOT
-- NULL. Each table is copied into one made without the key, which then takes its name.

CREATE TABLE core_customers__unkeyed (
    customer_id VARCHAR NOT NULL, "name" VARCHAR, email VARCHAR, email_domain VARCHAR,
    currency VARCHAR, metadata JSON, default_payment_method VARCHAR,
    default_source VARCHAR, delinquent BOOLEAN, livemode BOOLEAN, created_at TIMESTAMP,
    is_deleted BOOLEAN DEFAULT(false) NOT NULL
);
INSERT INTO core_customers__unkeyed SELECT * FROM core_customers;
DROP TABLE core_customers;
ALTER TABLE core_customers__unkeyed RENAME TO core_customers;

CREATE TABLE core_subscriptions__unkeyed (
    subscription_id VARCHAR NOT NULL, customer_id VARCHAR NOT NULL,
    status VARCHAR NOT NULL, currency VARCHAR, collection_method VARCHAR,
    cancel_at_period_end BOOLEAN DEFAULT(false) NOT NULL, cancel_at TIMESTAMP,
    canceled_at TIMESTAMP, ended_at TIMESTAMP, current_period_start TIMESTAMP,
    current_period_end TIMESTAMP, trial_start TIMESTAMP, trial_end TIMESTAMP,
    start_date TIMESTAMP, default_payment_method VARCHAR, default_source VARCHAR,
    latest_invoice_id VARCHAR, cancellation_reason VARCHAR, metadata JSON,
    livemode BOOLEAN, created_at TIMESTAMP, is_deleted BOOLEAN DEFAULT(false) NOT NULL,
    pause_behavior VARCHAR, pause_resumes_at TIMESTAMP
);
INSERT INTO core_subscriptions__unkeyed SELECT * FROM core_subscriptions;
DROP TABLE core_subscriptions;
ALTER TABLE core_subscriptions__unkeyed RENAME TO core_subscriptions;

CREATE TABLE core_subscription_items__unkeyed (
    item_id VARCHAR NOT NULL, subscription_id VARCHAR NOT NULL,
    price_id VARCHAR NOT NULL, quantity BIGINT, current_period_start TIMESTAMP,
    current_period_end TIMESTAMP, created_at TIMESTAMP
);
INSERT INTO core_subscription_items__unkeyed SELECT * FROM core_subscription_items;
DROP TABLE core_subscription_items;
ALTER TABLE core_subscription_items__unkeyed RENAME TO core_subscription_items;

CREATE TABLE core_subscription_discounts__unkeyed (
    subscription_id VARCHAR NOT NULL, discount_id VARCHAR NOT NULL, coupon_id VARCHAR,
    percent_off DECIMAL(9,4), amount_off BIGINT, currency VARCHAR, duration VARCHAR,
    duration_in_months INTEGER, starts_at TIMESTAMP, ends_at TIMESTAMP
);
INSERT INTO core_subscription_discounts__unkeyed SELECT * FROM core_subscription_discounts;
DROP TABLE core_subscription_discounts;
ALTER TABLE core_subscription_discounts__unkeyed RENAME TO core_subscription_discounts;

CREATE TABLE core_invoices__unkeyed (
    invoice_id VARCHAR NOT NULL, customer_id VARCHAR, subscription_id VARCHAR,
    status VARCHAR, currency VARCHAR, amount_due BIGINT, amount_paid BIGINT,
    amount_remaining BIGINT, subtotal BIGINT, tax BIGINT, total BIGINT,
    attempt_count INTEGER, attempted BOOLEAN, next_payment_attempt TIMESTAMP,
    billing_reason VARCHAR, collection_method VARCHAR, period_start TIMESTAMP,
    period_end TIMESTAMP, due_date TIMESTAMP, finalized_at TIMESTAMP,
    paid_at TIMESTAMP, voided_at TIMESTAMP, marked_uncollectible_at TIMESTAMP,
    charge_id VARCHAR, payment_intent_id VARCHAR, livemode BOOLEAN,
    created_at TIMESTAMP, is_deleted BOOLEAN DEFAULT(false) NOT NULL,
    inclusive_tax BIGINT, inclusive_taxable BIGINT, other_subscriptions VARCHAR[]
);
INSERT INTO core_invoices__unkeyed SELECT * FROM core_invoices;
DROP TABLE core_invoices;
ALTER TABLE core_invoices__unkeyed RENAME TO core_invoices;

CREATE TABLE core_charges__unkeyed (
    charge_id VARCHAR NOT NULL, customer_id VARCHAR, invoice_id VARCHAR,
    payment_intent_id VARCHAR, payment_method_id VARCHAR, amount BIGINT,
    amount_refunded BIGINT, currency VARCHAR, status VARCHAR, paid BOOLEAN,
    failure_code VARCHAR, failure_message VARCHAR, decline_code VARCHAR,
    outcome_type VARCHAR, card_exp_month INTEGER, card_exp_year INTEGER,
    livemode BOOLEAN, created_at TIMESTAMP, advice_code VARCHAR,
    network_status VARCHAR
);
INSERT INTO core_charges__unkeyed SELECT * FROM core_charges;
DROP TABLE core_charges;
ALTER TABLE core_charges__unkeyed RENAME TO core_charges;

CREATE TABLE core_refunds__unkeyed (
    refund_id VARCHAR NOT NULL, charge_id VARCHAR, amount BIGINT, currency VARCHAR,
    status VARCHAR, reason VARCHAR, created_at TIMESTAMP
);
INSERT INTO core_refunds__unkeyed SELECT * FROM core_refunds;
DROP TABLE core_refunds;
ALTER TABLE core_refunds__unkeyed RENAME TO core_refunds;

CREATE TABLE core_payment_methods__unkeyed (
    payment_method_id VARCHAR NOT NULL, customer_id VARCHAR, "type" VARCHAR,
    card_brand VARCHAR, card_last4 VARCHAR, card_exp_month INTEGER,
    card_exp_year INTEGER, livemode BOOLEAN, created_at TIMESTAMP,
    is_deleted BOOLEAN DEFAULT(false) NOT NULL
);
INSERT INTO core_payment_methods__unkeyed SELECT * FROM core_payment_methods;
DROP TABLE core_payment_methods;
ALTER TABLE core_payment_methods__unkeyed RENAME TO core_payment_methods;

CREATE TABLE core_payment_intents__unkeyed (
    payment_intent_id VARCHAR NOT NULL, customer_id VARCHAR, invoice_id VARCHAR,
    status VARCHAR, amount BIGINT, amount_received BIGINT, currency VARCHAR,
    payment_method_id VARCHAR, latest_charge_id VARCHAR, last_error_code VARCHAR,
    last_decline_code VARCHAR, last_advice_code VARCHAR, last_error_charge_id VARCHAR,
    last_error_payment_method_id VARCHAR, canceled_at TIMESTAMP, livemode BOOLEAN,
    created_at TIMESTAMP
);
INSERT INTO core_payment_intents__unkeyed SELECT * FROM core_payment_intents;
DROP TABLE core_payment_intents;
ALTER TABLE core_payment_intents__unkeyed RENAME TO core_payment_intents;

CREATE TABLE core_invoice_payments__unkeyed (
    invoice_payment_id VARCHAR NOT NULL, invoice_id VARCHAR, payment_type VARCHAR,
    payment_intent_id VARCHAR, charge_id VARCHAR, status VARCHAR, amount_paid BIGINT,
    amount_requested BIGINT, currency VARCHAR, is_default BOOLEAN, paid_at TIMESTAMP,
    canceled_at TIMESTAMP, livemode BOOLEAN, created_at TIMESTAMP
);
INSERT INTO core_invoice_payments__unkeyed SELECT * FROM core_invoice_payments;
DROP TABLE core_invoice_payments;
ALTER TABLE core_invoice_payments__unkeyed RENAME TO core_invoice_payments;
