-- Every message's delivery row is written three times (claim, call mark, outcome) and its
-- execution row twice (claim, accepted). An update that changes no indexed column and finds room
-- on its page is a HOT update: no new index entries, and the old version is pruned in place.
--
-- `deliveries_by_campaign` indexed `updated_at`, which every update changes, so no delivery
-- update could be HOT; nothing reads through it (reports read the rollups, a status reads by
-- execution id). The fill factors leave a fifth of each new page free for the updates that
-- follow an insert within milliseconds.
DROP INDEX IF EXISTS deliveries_by_campaign;
ALTER TABLE deliveries SET (fillfactor = 80);
ALTER TABLE executions SET (fillfactor = 80);
