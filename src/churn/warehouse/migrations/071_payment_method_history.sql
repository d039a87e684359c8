-- Point in time for what card_expiry reads that Stripe changes in place (engineer "pit").
-- Validity intervals [valid_from, valid_to), valid_to NULL meaning "still so", like
-- history_subscriptions; built by pipelines/stripe/history.py from every customer and
-- payment method payload known (the events Stripe keeps, each listing).

-- A customer's defaults over time: invoice_settings.default_payment_method and the
-- legacy default_source change with customer.updated.
CREATE TABLE history_customer_defaults (
    customer_id VARCHAR NOT NULL,
    valid_from TIMESTAMP NOT NULL,
    valid_to TIMESTAMP,
    default_payment_method VARCHAR,
    default_source VARCHAR,
    PRIMARY KEY (customer_id, valid_from)
);

-- A payment method (or legacy card) over time: a card's exp_month/exp_year is updated
-- in place on the same id (payment_method.updated, payment_method.automatically_updated
-- when the network sends new details); detached (customer NULL) or deleted from then.
CREATE TABLE history_payment_methods (
    payment_method_id VARCHAR NOT NULL,
    valid_from TIMESTAMP NOT NULL,
    valid_to TIMESTAMP,
    customer_id VARCHAR,
    type VARCHAR,
    card_brand VARCHAR,
    card_last4 VARCHAR,
    card_exp_month INTEGER,
    card_exp_year INTEGER,
    is_deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (payment_method_id, valid_from)
);
