-- The marts, the usage gaps and the scoring's copy of the Salesforce Accounts without
-- their primary keys. Each snapshot is written by one transaction that first deletes the
-- rows of its as_of (churn.job.scoring.score), and score_sf_accounts is replaced whole
-- from core_accounts (keyed itself), so a key never repeats by construction (the fault
-- suite counts duplicates in every mart). The keys only cost index upkeep, and the dear
-- part is deleting: DuckDB takes each deleted row's key out of the index when the
-- transaction commits, about 13 us a row. Measured at 100,000 accounts: dropping one
-- snapshot of mrr_movements (200,000 rows) committed in 3.1 s with the key, at once
-- without; a whole scoring's commit 3.8 s -> 0.2 s (every scoring drops the previous
-- usage gaps and replaces the 85,000 Accounts of score_sf_accounts; after the first days
-- the retention drops one snapshot of every mart a run). Snapshots are read by as_of,
-- which the tables hold in insertion order: zone maps skip the rest without an index.
-- The key columns stay NOT NULL. Each table is copied into one made without the key,
-- which then takes its name. (Number 112 is left unused: a migration of the Stripe core
-- tables without keys had it for one commit and was reverted.)

CREATE TABLE signal_events__unkeyed (
    account_id VARCHAR NOT NULL, signal VARCHAR NOT NULL, score DOUBLE NOT NULL,
    severity VARCHAR NOT NULL, reason VARCHAR NOT NULL, evidence JSON,
    as_of TIMESTAMP NOT NULL, episode_key VARCHAR NOT NULL
);
INSERT INTO signal_events__unkeyed SELECT * FROM signal_events;
DROP TABLE signal_events;
ALTER TABLE signal_events__unkeyed RENAME TO signal_events;

CREATE TABLE account_health__unkeyed (
    account_id VARCHAR NOT NULL, as_of TIMESTAMP NOT NULL, payment_health VARCHAR NOT NULL,
    risk_score INTEGER NOT NULL, known_churn BOOLEAN NOT NULL, churn_effective_at TIMESTAMP,
    reporting_currency VARCHAR NOT NULL, total_mrr_minor BIGINT, mrr_at_risk_minor BIGINT,
    next_renewal_at TIMESTAMP, last_successful_payment_at TIMESTAMP,
    days_since_last_payment INTEGER, subscription_count INTEGER NOT NULL, top_reasons JSON,
    stripe_customer_ids JSON, churn_probability DOUBLE, expected_mrr_at_risk_minor BIGINT,
    model_version VARCHAR, scored_as_of TIMESTAMP
);
INSERT INTO account_health__unkeyed SELECT * FROM account_health;
DROP TABLE account_health;
ALTER TABLE account_health__unkeyed RENAME TO account_health;

CREATE TABLE account_mrr__unkeyed (
    account_id VARCHAR NOT NULL, as_of TIMESTAMP NOT NULL, currency VARCHAR NOT NULL,
    mrr_minor BIGINT, reporting_currency VARCHAR NOT NULL, source_rate DECIMAL(18,9),
    reporting_rate DECIMAL(18,9), reporting_mrr_minor BIGINT
);
INSERT INTO account_mrr__unkeyed SELECT * FROM account_mrr;
DROP TABLE account_mrr;
ALTER TABLE account_mrr__unkeyed RENAME TO account_mrr;

CREATE TABLE mrr_movements__unkeyed (
    account_id VARCHAR NOT NULL, "month" DATE NOT NULL, as_of TIMESTAMP NOT NULL,
    reporting_currency VARCHAR NOT NULL, movement VARCHAR NOT NULL,
    start_mrr_minor BIGINT NOT NULL, end_mrr_minor BIGINT NOT NULL, amount_minor BIGINT NOT NULL
);
INSERT INTO mrr_movements__unkeyed SELECT * FROM mrr_movements;
DROP TABLE mrr_movements;
ALTER TABLE mrr_movements__unkeyed RENAME TO mrr_movements;

CREATE TABLE score_usage_gaps__unkeyed (
    as_of TIMESTAMP NOT NULL, account_id VARCHAR NOT NULL, code VARCHAR NOT NULL,
    samples BIGINT, "days" BIGINT, cadence_days BIGINT, window_days BIGINT
);
INSERT INTO score_usage_gaps__unkeyed SELECT * FROM score_usage_gaps;
DROP TABLE score_usage_gaps;
ALTER TABLE score_usage_gaps__unkeyed RENAME TO score_usage_gaps;

CREATE TABLE score_sf_accounts__unkeyed (
    account_id VARCHAR NOT NULL, owner_id VARCHAR, is_deleted BOOLEAN, currency_iso_code VARCHAR
);
INSERT INTO score_sf_accounts__unkeyed SELECT * FROM score_sf_accounts;
DROP TABLE score_sf_accounts;
ALTER TABLE score_sf_accounts__unkeyed RENAME TO score_sf_accounts;
