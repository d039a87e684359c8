-- Links from when: every link a customer has had, as validity intervals. The link step
-- opens a version when a customer's link changes (Account, rule or reason) and closes the
-- one before; a rerun without change writes nothing here. valid_from is the time of the
-- link step that first saw the version.
CREATE TABLE history_account_links (
    customer_id VARCHAR NOT NULL,
    valid_from TIMESTAMP NOT NULL,
    valid_to TIMESTAMP,                -- NULL while in force
    account_id VARCHAR,                -- NULL when unmatched or conflicting
    method VARCHAR NOT NULL,
    detail VARCHAR,
    PRIMARY KEY (customer_id, valid_from)
);

INSERT INTO history_account_links
SELECT customer_id, linked_at, NULL, account_id, method, detail FROM core_account_links;

-- core_account_links.linked_at is from now on the time the customer was first linked to its
-- current Account (kept across reruns); valid_from starts its current version.
ALTER TABLE core_account_links ADD COLUMN valid_from TIMESTAMP;
UPDATE core_account_links SET valid_from = linked_at;

-- The versions with the instant each is in force from: a customer's first version holds
-- back to before it was seen (nothing else was ever known of its link, as a subscription's
-- first listed state holds before it was listed), so a back-fill on a new warehouse links;
-- a later version holds from when it was seen, so a relink never rewrites the past.
-- Point-in-time join for a score at instant t (one row per customer at any t):
--   LEFT JOIN account_link_versions l ON l.customer_id = <customer>
--     AND l.in_force_from <= t AND (l.valid_to IS NULL OR l.valid_to > t)
CREATE VIEW account_link_versions AS
SELECT customer_id, account_id, method, detail, valid_from, valid_to,
       CASE WHEN valid_from = min(valid_from) OVER (PARTITION BY customer_id)
            THEN '-infinity'::TIMESTAMP ELSE valid_from END AS in_force_from
FROM history_account_links;

-- The same for one instant: FROM account_links_as_of($as_of) replaces FROM core_account_links.
CREATE MACRO account_links_as_of(t) AS TABLE
SELECT customer_id, account_id, method, detail, valid_from, valid_to
FROM account_link_versions
WHERE in_force_from <= t AND (valid_to IS NULL OR valid_to > t);
