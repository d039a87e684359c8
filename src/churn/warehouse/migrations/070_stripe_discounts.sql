-- Discounts as objects of their own (engineer "pit", range 070-074).
--
-- Since 2025-03-31.basil a subscription's `discounts` is a list of discount ids, and
-- "Discounts cannot be fetched by ID. Use expand[]=discounts in API calls to expand
-- discount IDs in an array." The subscription listing expands them; each one lands here
-- (latest payload per id, like every raw_stripe_<object> table), so an event that carries
-- only ids is resolved from the latest expanded listing. A discount removed from its
-- subscription (`customer.discount.deleted`) is kept, flagged deleted as of its event.
CREATE TABLE raw_stripe_discount AS SELECT * FROM raw_stripe_customer WITH NO DATA;
CREATE UNIQUE INDEX raw_stripe_discount_id ON raw_stripe_discount (id);
