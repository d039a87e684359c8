-- The churn-risk model's versions (churn.signals.model, written by churn.job.model).
-- One row per trained model: its card (data window, features, back-test metrics beside
-- the rule-based baseline), the fitted estimator as skops bytes (loaded only with an
-- explicit trusted-type list, never unpickled) and whether it is the one in force.
-- A baseline row (kind 'baseline', no model bytes) records a training that found too
-- little history; it is never promoted.
CREATE TABLE model_registry (
    version VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,             -- logistic | gradient_boosting | baseline
    trained_at TIMESTAMP NOT NULL,
    cutoff TIMESTAMP NOT NULL,         -- no training label reads past it
    data_from TIMESTAMP,               -- first and last training snapshot
    data_to TIMESTAMP,
    horizon_days INTEGER NOT NULL,
    features JSON NOT NULL,
    metrics JSON,                      -- back-test: per candidate and the baseline
    card JSON NOT NULL,
    serialization VARCHAR,             -- 'skops' when model bytes are stored
    model BLOB,
    promoted BOOLEAN NOT NULL DEFAULT FALSE,
    promoted_at TIMESTAMP
);
