-- The Stripe objects whose raw row (or, for subscriptions, whose set of versions) changed
-- since core_* and the history were last brought up to date. Written in the same
-- transaction as the rows themselves; emptied in the transaction that rebuilds core and
-- history for exactly these ids, so an incremental run does work in proportion to what
-- changed, not to the warehouse. A warehouse migrated to this has core and history
-- already built from every raw row: an empty table is the right start.
CREATE TABLE stripe_dirty (
    stream VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    PRIMARY KEY (stream, id)
);
