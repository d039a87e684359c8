-- The churn-risk model's columns beside the rule-based score (issue: the churn-risk model).
-- churn_probability: the calibrated probability of churn within the model's horizon, NULL
-- while no model is in force (the rule-based risk_score is then the fallback).
-- expected_mrr_at_risk_minor: probability x MRR (the whole MRR for known churn or Failed;
-- risk_score / 100 x MRR while no model is in force), in the reporting currency.
-- model_version: the model that made churn_probability; NULL for the rule-based score.
ALTER TABLE account_health ADD COLUMN churn_probability DOUBLE;
ALTER TABLE account_health ADD COLUMN expected_mrr_at_risk_minor BIGINT;
ALTER TABLE account_health ADD COLUMN model_version VARCHAR;
