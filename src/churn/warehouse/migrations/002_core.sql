-- Typed, version-normalised tables built from the raw ones, and the subscription history.
-- Money: BIGINT minor units plus a lower-case ISO currency code (Stripe's spelling).
-- Timestamps: UTC.

CREATE TABLE core_customers (
    customer_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    email VARCHAR,
    email_domain VARCHAR,            -- lower-case domain of email, NULL when none
    currency VARCHAR,
    metadata JSON,
    default_payment_method VARCHAR,  -- invoice_settings.default_payment_method
    default_source VARCHAR,
    delinquent BOOLEAN,
    livemode BOOLEAN,
    created_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_products (
    product_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    active BOOLEAN,
    livemode BOOLEAN,
    created_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

-- Prices and legacy Plans alike (a Plan is a recurring Price in older API versions).
CREATE TABLE core_prices (
    price_id VARCHAR PRIMARY KEY,
    product_id VARCHAR,
    nickname VARCHAR,
    currency VARCHAR NOT NULL,
    type VARCHAR,                    -- recurring | one_time
    billing_scheme VARCHAR,          -- per_unit | tiered
    unit_amount BIGINT,              -- minor units; NULL for tiered
    unit_amount_decimal VARCHAR,     -- exact decimal string when sub-minor-unit
    tiers_mode VARCHAR,              -- volume | graduated | NULL
    tiers JSON,                      -- [{up_to, unit_amount, flat_amount}, ...]
    recurring_interval VARCHAR,      -- day | week | month | year
    recurring_interval_count INTEGER,
    usage_type VARCHAR,              -- licensed | metered
    transform_divide_by BIGINT,
    transform_round VARCHAR,
    active BOOLEAN,
    livemode BOOLEAN,
    created_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_coupons (
    coupon_id VARCHAR PRIMARY KEY,
    percent_off DECIMAL(9, 4),
    amount_off BIGINT,
    currency VARCHAR,
    duration VARCHAR,                -- forever | once | repeating
    duration_in_months INTEGER,
    livemode BOOLEAN,
    created_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_subscriptions (
    subscription_id VARCHAR PRIMARY KEY,
    customer_id VARCHAR NOT NULL,
    status VARCHAR NOT NULL,         -- trialing | active | past_due | unpaid | canceled | incomplete | incomplete_expired | paused
    currency VARCHAR,
    collection_method VARCHAR,
    cancel_at_period_end BOOLEAN NOT NULL DEFAULT FALSE,
    cancel_at TIMESTAMP,
    canceled_at TIMESTAMP,
    ended_at TIMESTAMP,
    current_period_start TIMESTAMP,  -- from the subscription (old shape) or its items (current)
    current_period_end TIMESTAMP,
    trial_start TIMESTAMP,
    trial_end TIMESTAMP,
    start_date TIMESTAMP,
    default_payment_method VARCHAR,
    default_source VARCHAR,
    latest_invoice_id VARCHAR,
    cancellation_reason VARCHAR,
    metadata JSON,
    livemode BOOLEAN,
    created_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_subscription_items (
    item_id VARCHAR PRIMARY KEY,
    subscription_id VARCHAR NOT NULL,
    price_id VARCHAR NOT NULL,
    quantity BIGINT,
    current_period_start TIMESTAMP,
    current_period_end TIMESTAMP,
    created_at TIMESTAMP
);

-- Discounts applied to a subscription (old shape: `discount`; current: `discounts`).
CREATE TABLE core_subscription_discounts (
    subscription_id VARCHAR NOT NULL,
    discount_id VARCHAR NOT NULL,
    coupon_id VARCHAR,
    percent_off DECIMAL(9, 4),
    amount_off BIGINT,
    currency VARCHAR,
    duration VARCHAR,
    duration_in_months INTEGER,
    starts_at TIMESTAMP,
    ends_at TIMESTAMP,
    PRIMARY KEY (subscription_id, discount_id)
);

CREATE TABLE core_invoices (
    invoice_id VARCHAR PRIMARY KEY,
    customer_id VARCHAR,
    subscription_id VARCHAR,         -- top-level (old) or parent.subscription_details (current)
    status VARCHAR,                  -- draft | open | paid | void | uncollectible
    currency VARCHAR,
    amount_due BIGINT,
    amount_paid BIGINT,
    amount_remaining BIGINT,
    subtotal BIGINT,
    tax BIGINT,
    total BIGINT,
    attempt_count INTEGER,
    attempted BOOLEAN,
    next_payment_attempt TIMESTAMP,
    billing_reason VARCHAR,
    collection_method VARCHAR,
    period_start TIMESTAMP,
    period_end TIMESTAMP,
    due_date TIMESTAMP,
    finalized_at TIMESTAMP,
    paid_at TIMESTAMP,
    voided_at TIMESTAMP,
    marked_uncollectible_at TIMESTAMP,
    charge_id VARCHAR,               -- old shape only
    payment_intent_id VARCHAR,
    livemode BOOLEAN,
    created_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_charges (
    charge_id VARCHAR PRIMARY KEY,
    customer_id VARCHAR,
    invoice_id VARCHAR,              -- old shape only; current shapes link through payment_intent
    payment_intent_id VARCHAR,
    payment_method_id VARCHAR,
    amount BIGINT,
    amount_refunded BIGINT,
    currency VARCHAR,
    status VARCHAR,                  -- succeeded | pending | failed
    paid BOOLEAN,
    failure_code VARCHAR,
    failure_message VARCHAR,
    decline_code VARCHAR,            -- outcome.reason, e.g. insufficient_funds, expired_card
    outcome_type VARCHAR,            -- authorized | issuer_declined | blocked | invalid
    card_exp_month INTEGER,
    card_exp_year INTEGER,
    livemode BOOLEAN,
    created_at TIMESTAMP
);

CREATE TABLE core_refunds (
    refund_id VARCHAR PRIMARY KEY,
    charge_id VARCHAR,
    amount BIGINT,
    currency VARCHAR,
    status VARCHAR,
    reason VARCHAR,
    created_at TIMESTAMP
);

CREATE TABLE core_payment_methods (
    payment_method_id VARCHAR PRIMARY KEY,  -- pm_... or a legacy card_... source
    customer_id VARCHAR,                    -- NULL once detached
    type VARCHAR,
    card_brand VARCHAR,
    card_last4 VARCHAR,
    card_exp_month INTEGER,
    card_exp_year INTEGER,
    livemode BOOLEAN,
    created_at TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

-- Every subscription's state over time, as validity intervals [valid_from, valid_to);
-- valid_to NULL means "still so". Built from event payloads and list snapshots, so any
-- past date can be re-scored: the state at T is the row with valid_from <= T < valid_to.
CREATE TABLE history_subscriptions (
    subscription_id VARCHAR NOT NULL,
    valid_from TIMESTAMP NOT NULL,
    valid_to TIMESTAMP,
    customer_id VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    currency VARCHAR,
    collection_method VARCHAR,
    cancel_at_period_end BOOLEAN NOT NULL,
    cancel_at TIMESTAMP,
    canceled_at TIMESTAMP,
    ended_at TIMESTAMP,
    current_period_start TIMESTAMP,
    current_period_end TIMESTAMP,
    trial_end TIMESTAMP,
    default_payment_method VARCHAR,
    PRIMARY KEY (subscription_id, valid_from)
);

CREATE TABLE history_subscription_items (
    subscription_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL,
    valid_from TIMESTAMP NOT NULL,
    valid_to TIMESTAMP,
    price_id VARCHAR NOT NULL,
    quantity BIGINT,
    PRIMARY KEY (item_id, valid_from)
);

-- Salesforce, typed.
CREATE TABLE core_accounts (
    account_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    website VARCHAR,
    website_domain VARCHAR,          -- lower-case registrable host of website
    owner_id VARCHAR,
    stripe_customer_id VARCHAR,      -- the configured custom field
    currency_iso_code VARCHAR,
    system_modstamp TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_users (
    user_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    email VARCHAR,
    is_active BOOLEAN,
    system_modstamp TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_opportunities (
    opportunity_id VARCHAR PRIMARY KEY,
    account_id VARCHAR,
    name VARCHAR,
    stage_name VARCHAR,
    amount DECIMAL(18, 2),
    currency_iso_code VARCHAR,
    close_date DATE,
    is_closed BOOLEAN,
    is_won BOOLEAN,
    system_modstamp TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE core_contacts (
    contact_id VARCHAR PRIMARY KEY,
    account_id VARCHAR,
    name VARCHAR,
    email VARCHAR,
    system_modstamp TIMESTAMP,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE
);

-- Rates as Salesforce states them: units of iso_code per one unit of the corporate currency.
CREATE TABLE core_currency_rates (
    iso_code VARCHAR PRIMARY KEY,    -- upper case, as Salesforce spells it
    conversion_rate DECIMAL(18, 9) NOT NULL,
    decimal_places INTEGER,
    is_corporate BOOLEAN NOT NULL DEFAULT FALSE,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    system_modstamp TIMESTAMP
);

-- One row per Stripe customer: its Salesforce Account, and how the link was made.
CREATE TABLE core_account_links (
    customer_id VARCHAR PRIMARY KEY,
    account_id VARCHAR,              -- NULL when unmatched or conflicting
    method VARCHAR NOT NULL,         -- metadata | account_field | email_domain | name | unmatched | conflict
    detail VARCHAR,
    linked_at TIMESTAMP NOT NULL
);

-- Active seats per account (or customer) per day, from the usage feed.
CREATE TABLE core_usage (
    account_id VARCHAR NOT NULL,     -- a Salesforce Account Id or a Stripe customer id
    day DATE NOT NULL,
    active_seats BIGINT NOT NULL,
    source VARCHAR,
    loaded_at TIMESTAMP NOT NULL,
    PRIMARY KEY (account_id, day)
);
