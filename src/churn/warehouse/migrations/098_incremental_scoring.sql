-- Incremental scoring (churn.job.incremental): what each scoring of the marts did.
-- landed_through: the newest landing instant in the warehouse when the scoring read it
-- (fetched_at, loaded_at, a link's valid_from; scoring reads no clock): rows landed after
-- it are the next scoring's changes. NULL: nothing had landed.
-- kind: 'full' (every account computed) or 'incremental' (the accounts in
-- score_state_accounts computed, the others' rows carried from the snapshot before).
-- fingerprint: the signal settings and the scoring code's version; model_version: the
-- churn model in force (NULL: the rule-based score); shared_digest: a digest of the input
-- every account reads (prices, products, coupons, currency rates, quarantined input). A
-- change of any of them scores in full.
CREATE TABLE score_state (
    as_of TIMESTAMP PRIMARY KEY,
    landed_through TIMESTAMP,
    kind VARCHAR NOT NULL,
    reason VARCHAR,
    fingerprint VARCHAR NOT NULL,
    model_version VARCHAR,
    shared_digest VARCHAR NOT NULL,
    accounts INTEGER NOT NULL
);

-- The accounts the newest incremental scoring computed (the push plans those).
CREATE TABLE score_state_accounts (
    as_of TIMESTAMP NOT NULL,
    account_id VARCHAR NOT NULL,
    PRIMARY KEY (as_of, account_id)
);

-- A row carried by an incremental scoring: the as_of it was computed at (NULL: as_of).
ALTER TABLE account_health ADD COLUMN scored_as_of TIMESTAMP;

-- What the last scoring read of each Salesforce Account (the owner, deleted or not): the
-- push's own updates move an Account's SystemModstamp and land it again, so the next
-- scoring compares these values rather than the landing time.
CREATE TABLE score_sf_accounts (
    account_id VARCHAR PRIMARY KEY,
    owner_id VARCHAR,
    is_deleted BOOLEAN
);
