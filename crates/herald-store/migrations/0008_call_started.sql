-- The mark a worker sets just before its provider call. A stale claim without it never reached
-- the provider and is sent again safely; one with it may have been sent and is recorded unknown.
ALTER TABLE deliveries ADD COLUMN call_started_at timestamptz;
