-- A subscription's legacy default_source over time (engineer "pit"): Stripe charges the
-- subscription's default_payment_method, else its default_source, else the customer's
-- invoice_settings.default_payment_method, else the customer's default_source.
ALTER TABLE history_subscriptions ADD COLUMN default_source VARCHAR;
