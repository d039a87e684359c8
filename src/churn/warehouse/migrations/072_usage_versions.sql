-- Usage restatements kept, not overwritten (engineer "pit").
--
-- core_usage holds the latest value of each sample (account_id, day) with the time it was
-- loaded; a later load that states another value for the same sample (a restatement)
-- moves the value it replaces here, with when it was replaced. A sample reloaded with
-- the same value keeps its first loaded_at.
CREATE TABLE core_usage_history (
    account_id VARCHAR NOT NULL,
    day DATE NOT NULL,
    active_seats BIGINT NOT NULL,
    source VARCHAR,
    loaded_at TIMESTAMP NOT NULL,
    replaced_at TIMESTAMP NOT NULL,
    PRIMARY KEY (account_id, day, loaded_at)
);

-- The usage feed as known at t, for the samples of days after since_day: of each
-- sample, the version loaded last at or before t; a sample first loaded after t (a
-- feed's history loaded on the first run) by its first version, the earliest statement
-- there is of that day. Samples never restated are read straight from core_usage.
CREATE MACRO core_usage_as_of(t, since_day) AS TABLE
    SELECT u.account_id, u.day, u.active_seats, u.source, u.loaded_at
    FROM core_usage u ANTI JOIN core_usage_history h USING (account_id, day)
    WHERE u.day > since_day
    UNION ALL
    SELECT account_id, day, active_seats, source, loaded_at FROM (
        SELECT u.account_id, u.day, u.active_seats, u.source, u.loaded_at
        FROM core_usage u SEMI JOIN core_usage_history h USING (account_id, day)
        WHERE u.day > since_day
        UNION ALL
        SELECT account_id, day, active_seats, source, loaded_at
        FROM core_usage_history WHERE day > since_day
    )
    QUALIFY row_number() OVER (
        PARTITION BY account_id, day
        ORDER BY loaded_at <= t DESC,
                 CASE WHEN loaded_at <= t THEN -epoch(loaded_at) ELSE epoch(loaded_at) END) = 1;
