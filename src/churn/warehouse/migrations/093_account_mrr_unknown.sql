-- An account's MRR in a currency is unknown (NULL, not 0) when one of its items is at a
-- price the extract quarantined (bad input): 0 would read as churn.
ALTER TABLE account_mrr ALTER COLUMN mrr_minor DROP NOT NULL;
