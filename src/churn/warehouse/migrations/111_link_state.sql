-- The input the last identity matching read (churn.pipelines.links): a digest of the live
-- customers' and every Account's matched columns, the matching settings and code. A run
-- whose input has the same digest would write the same links, so it skips the matching.
-- Written in the links' own transaction; one row.
CREATE TABLE link_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    digest VARCHAR NOT NULL,
    linked_at TIMESTAMP NOT NULL
);
