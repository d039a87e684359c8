-- The Stripe core tables and the Stripe history without their primary keys. Both are
-- derived: each rebuild chunk deletes its ids' rows and inserts them again from the raw
-- tables (churn.pipelines.stripe.rebuild), one row per key by construction, which the
-- rebuild tests check (CoreTable.unique, HISTORY_KEYS; the fault suite counts repeated
-- rows as multisets). The keys only cost upkeep, and the dear part is the checkpoint:
-- DuckDB writes a changed table's key index whole, so an incremental run that rebuilds
-- a few hundred subscriptions rewrote the indexes of the million-row core and history
-- tables. Measured at 100,000 accounts, 1% of subscriptions changed a run, the same runs
-- against two copies of one warehouse (five rounds, no push): the read copy's bytes that
-- differ from the version two runs back 429-468 MB with the keys, 266-295 MB without;
-- the run 0.6 s shorter (median; -0.8 to +0.1 s). (Number 112 had the Stripe core alone
-- for one commit and was reverted: no gain in a backfill, where core starts empty.)
-- Reads join these tables by hash; a point read of one id scans the column (7 ms for
-- one subscription's history at 100,000 accounts). The key columns stay NOT NULL. Each
-- table is copied into one made without the key, which then takes its name (5.9 s at
-- 100,000 accounts).

CREATE TABLE core_products__unkeyed (
    product_id VARCHAR NOT NULL, "name" VARCHAR, active BOOLEAN, livemode BOOLEAN,
    created_at TIMESTAMP, is_deleted BOOLEAN DEFAULT(false) NOT NULL
);
INSERT INTO core_products__unkeyed SELECT * FROM core_products;
DROP TABLE core_products;
ALTER TABLE core_products__unkeyed RENAME TO core_products;

CREATE TABLE core_prices__unkeyed (
    price_id VARCHAR NOT NULL, product_id VARCHAR, nickname VARCHAR,
    currency VARCHAR NOT NULL, "type" VARCHAR, billing_scheme VARCHAR,
    unit_amount BIGINT, unit_amount_decimal VARCHAR, tiers_mode VARCHAR, tiers JSON,
    recurring_interval VARCHAR, recurring_interval_count INTEGER, usage_type VARCHAR,
    transform_divide_by BIGINT, transform_round VARCHAR, active BOOLEAN,
    livemode BOOLEAN, created_at TIMESTAMP, is_deleted BOOLEAN DEFAULT(false) NOT NULL,
    tax_behavior VARCHAR
);
INSERT INTO core_prices__unkeyed SELECT * FROM core_prices;
DROP TABLE core_prices;
ALTER TABLE core_prices__unkeyed RENAME TO core_prices;

CREATE TABLE core_coupons__unkeyed (
    coupon_id VARCHAR NOT NULL, percent_off DECIMAL(9,4), amount_off BIGINT,
    currency VARCHAR, duration VARCHAR, duration_in_months INTEGER, livemode BOOLEAN,
    created_at TIMESTAMP, is_deleted BOOLEAN DEFAULT(false) NOT NULL
);
INSERT INTO core_coupons__unkeyed SELECT * FROM core_coupons;
DROP TABLE core_coupons;
ALTER TABLE core_coupons__unkeyed RENAME TO core_coupons;

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
    period_end TIMESTAMP, due_date TIMESTAMP, finalized_at TIMESTAMP, paid_at TIMESTAMP,
    voided_at TIMESTAMP, marked_uncollectible_at TIMESTAMP, charge_id VARCHAR,
    payment_intent_id VARCHAR, livemode BOOLEAN, created_at TIMESTAMP,
    is_deleted BOOLEAN DEFAULT(false) NOT NULL, inclusive_tax BIGINT,
    inclusive_taxable BIGINT, other_subscriptions VARCHAR[]
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
    livemode BOOLEAN, created_at TIMESTAMP, advice_code VARCHAR, network_status VARCHAR
);
INSERT INTO core_charges__unkeyed SELECT * FROM core_charges;
DROP TABLE core_charges;
ALTER TABLE core_charges__unkeyed RENAME TO core_charges;

CREATE TABLE core_invoice_payments__unkeyed (
    invoice_payment_id VARCHAR NOT NULL, invoice_id VARCHAR, payment_type VARCHAR,
    payment_intent_id VARCHAR, charge_id VARCHAR, status VARCHAR, amount_paid BIGINT,
    amount_requested BIGINT, currency VARCHAR, is_default BOOLEAN, paid_at TIMESTAMP,
    canceled_at TIMESTAMP, livemode BOOLEAN, created_at TIMESTAMP
);
INSERT INTO core_invoice_payments__unkeyed SELECT * FROM core_invoice_payments;
DROP TABLE core_invoice_payments;
ALTER TABLE core_invoice_payments__unkeyed RENAME TO core_invoice_payments;

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

CREATE TABLE history_subscriptions__unkeyed (
    subscription_id VARCHAR NOT NULL, valid_from TIMESTAMP NOT NULL, valid_to TIMESTAMP,
    customer_id VARCHAR NOT NULL, status VARCHAR NOT NULL, currency VARCHAR,
    collection_method VARCHAR, cancel_at_period_end BOOLEAN NOT NULL,
    cancel_at TIMESTAMP, canceled_at TIMESTAMP, ended_at TIMESTAMP,
    current_period_start TIMESTAMP, current_period_end TIMESTAMP, trial_end TIMESTAMP,
    default_payment_method VARCHAR, pause_behavior VARCHAR, pause_resumes_at TIMESTAMP,
    default_source VARCHAR
);
INSERT INTO history_subscriptions__unkeyed SELECT * FROM history_subscriptions;
DROP TABLE history_subscriptions;
ALTER TABLE history_subscriptions__unkeyed RENAME TO history_subscriptions;

CREATE TABLE history_subscription_items__unkeyed (
    subscription_id VARCHAR NOT NULL, item_id VARCHAR NOT NULL,
    valid_from TIMESTAMP NOT NULL, valid_to TIMESTAMP, price_id VARCHAR NOT NULL,
    quantity BIGINT
);
INSERT INTO history_subscription_items__unkeyed SELECT * FROM history_subscription_items;
DROP TABLE history_subscription_items;
ALTER TABLE history_subscription_items__unkeyed RENAME TO history_subscription_items;

CREATE TABLE history_payment_methods__unkeyed (
    payment_method_id VARCHAR NOT NULL, valid_from TIMESTAMP NOT NULL,
    valid_to TIMESTAMP, customer_id VARCHAR, "type" VARCHAR, card_brand VARCHAR,
    card_last4 VARCHAR, card_exp_month INTEGER, card_exp_year INTEGER,
    is_deleted BOOLEAN DEFAULT(false) NOT NULL
);
INSERT INTO history_payment_methods__unkeyed SELECT * FROM history_payment_methods;
DROP TABLE history_payment_methods;
ALTER TABLE history_payment_methods__unkeyed RENAME TO history_payment_methods;

CREATE TABLE history_customer_defaults__unkeyed (
    customer_id VARCHAR NOT NULL, valid_from TIMESTAMP NOT NULL, valid_to TIMESTAMP,
    default_payment_method VARCHAR, default_source VARCHAR
);
INSERT INTO history_customer_defaults__unkeyed SELECT * FROM history_customer_defaults;
DROP TABLE history_customer_defaults;
ALTER TABLE history_customer_defaults__unkeyed RENAME TO history_customer_defaults;
