-- Per step, sentences about what it could not use and why (counts and reasons only,
-- never customer data), e.g. usage too sparse for the seat signals: {"score": ["..."]}.
ALTER TABLE run_log ADD COLUMN notes JSON;
