-- raw_stripe_event without its index on object_id. No statement looks an event up by one
-- object id: the readers by object (the history's in-place versions, the payment failures'
-- invoice events, the timeline's failed attempts) join on it, which DuckDB plans as hash
-- joins, never an index scan. The index was upkeep only: each insert of 1,000 events took
-- 0.14-0.18 s with it and 0.02-0.03 s without (100,000-account warehouse, 390,000 events),
-- and every checkpoint after an insert wrote it again (50 MB written against 25 MB). The
-- event id stays the key (an event lands once).
DROP INDEX IF EXISTS raw_stripe_event_object;
