-- The registrable domain of every email and website domain the identity matching has
-- read (churn.pipelines.links), by the Public Suffix List version that judged it. Each
-- matching judged every customer's and Account's domain again: about 185,000 list
-- look-ups, 0.7 s of its 1.35 s at 100,000 accounts, on each run where one customer or
-- Account changed. Rows of another list version are not read and are replaced; written in
-- the links' own transaction. No key: new domains are added by an anti-join.
CREATE TABLE link_domains (
    domain VARCHAR NOT NULL,
    registrable VARCHAR,
    psl_version VARCHAR NOT NULL
);
