-- Semantics of MRR (issue 11): a subscription's pause_collection (behavior, resumes_at)
-- in core and in its history; a price's tax_behavior; per invoice, the inclusive taxes of
-- its lines and the amount they were computed on, so MRR can be net of tax.
ALTER TABLE core_subscriptions ADD COLUMN pause_behavior VARCHAR;
ALTER TABLE core_subscriptions ADD COLUMN pause_resumes_at TIMESTAMP;
ALTER TABLE history_subscriptions ADD COLUMN pause_behavior VARCHAR;
ALTER TABLE history_subscriptions ADD COLUMN pause_resumes_at TIMESTAMP;
ALTER TABLE core_prices ADD COLUMN tax_behavior VARCHAR;
ALTER TABLE core_invoices ADD COLUMN inclusive_tax BIGINT;
ALTER TABLE core_invoices ADD COLUMN inclusive_taxable BIGINT;
