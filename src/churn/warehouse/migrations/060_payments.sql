-- Payments in today's API shapes (engineer "payments", range 060-064).
-- Since 2025-03-31.basil a Charge has no `invoice` and an Invoice no `charge` or
-- `payment_intent`: they meet through Invoice Payments (/v1/invoice_payments: an invoice
-- and its payment, a PaymentIntent or, for a charge without one, a Charge), and each
-- attempt to pay is a Charge of that PaymentIntent.
CREATE TABLE raw_stripe_invoice_payment AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE UNIQUE INDEX raw_stripe_invoice_payment_id ON raw_stripe_invoice_payment (id);
CREATE TABLE raw_stripe_payment_intent AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE UNIQUE INDEX raw_stripe_payment_intent_id ON raw_stripe_payment_intent (id);

CREATE TABLE core_invoice_payments (
    invoice_payment_id VARCHAR PRIMARY KEY,
    invoice_id VARCHAR,
    payment_type VARCHAR,            -- payment_intent | charge | payment_record
    payment_intent_id VARCHAR,
    charge_id VARCHAR,               -- only when the charge has no payment intent
    status VARCHAR,                  -- open | paid | canceled
    amount_paid BIGINT,
    amount_requested BIGINT,
    currency VARCHAR,
    is_default BOOLEAN,
    paid_at TIMESTAMP,
    canceled_at TIMESTAMP,
    livemode BOOLEAN,
    created_at TIMESTAMP
);

CREATE TABLE core_payment_intents (
    payment_intent_id VARCHAR PRIMARY KEY,
    customer_id VARCHAR,
    invoice_id VARCHAR,              -- before basil only
    status VARCHAR,
    amount BIGINT,
    amount_received BIGINT,
    currency VARCHAR,
    payment_method_id VARCHAR,
    latest_charge_id VARCHAR,
    last_error_code VARCHAR,         -- last_payment_error.code, e.g. card_declined
    last_decline_code VARCHAR,       -- last_payment_error.decline_code
    last_advice_code VARCHAR,        -- last_payment_error.advice_code
    last_error_charge_id VARCHAR,    -- last_payment_error.charge
    last_error_payment_method_id VARCHAR,
    canceled_at TIMESTAMP,
    livemode BOOLEAN,
    created_at TIMESTAMP
);

-- What a decline advises (outcome.advice_code: do_not_try_again | try_again_later |
-- confirm_card_data) and whether the network declined it (outcome.network_status).
ALTER TABLE core_charges ADD COLUMN advice_code VARCHAR;
ALTER TABLE core_charges ADD COLUMN network_status VARCHAR;

-- An invoice's state as each of its events carried it (the events Stripe keeps, 30 days,
-- and every one since): what was known of its attempts and its next retry at a past
-- instant, where the charges are missing. A view: the events are the record.
CREATE VIEW history_invoice_events AS
SELECT object_id AS invoice_id,
       type AS event_type,
       created AS created_at,
       TRY_CAST(payload->>'$.data.object.attempt_count' AS INTEGER) AS attempt_count,
       stripe_ts(payload->'$.data.object.next_payment_attempt') AS next_payment_attempt,
       payload->>'$.data.object.status' AS status
FROM raw_stripe_event
WHERE object_type = 'invoice' AND object_id IS NOT NULL;
