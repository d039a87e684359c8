-- What the last scoring read of each Salesforce Account also keeps its CurrencyIsoCode:
-- the push writes an Account's Currency fields in the Account's currency, so a changed
-- currency makes the account a change for the next incremental scoring (and its push),
-- while the push's own updates, landing every pushed Account again, no longer do
-- (churn.job.incremental.pushed_accounts compares the owned fields with push_state).
ALTER TABLE score_sf_accounts ADD COLUMN currency_iso_code VARCHAR;
