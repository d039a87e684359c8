-- The accounts whose usage supports no seat signal as a scoring found them, per snapshot
-- (churn.signals.seat_utilization.unsupported; the run's counts seat_usage_* and notes):
-- an incremental scoring recomputes the rows of the accounts it computes and carries the
-- others' from the snapshot before, as it carries their marts' rows, instead of reading
-- every account's usage. Only the newest snapshot's rows (and a back-fill's) are kept.
CREATE TABLE score_usage_gaps (
    as_of TIMESTAMP NOT NULL,
    account_id VARCHAR NOT NULL,
    code VARCHAR NOT NULL,
    samples BIGINT,
    days BIGINT,
    cadence_days BIGINT,
    window_days BIGINT,
    PRIMARY KEY (as_of, account_id)
);
