-- Report rollups: per campaign, channel and minute, how many recipients were targeted and what
-- became of them. Reports read these, never the delivery records, so a report over millions of
-- deliveries reads a few thousand rows.
--
-- Statement-level triggers count every path that writes an outcome (batched finishes, exclusions,
-- abandoned claims, dead letters, accepted executions) once, in the transaction that writes it,
-- without any caller having to remember. They only append to `report_pending`: concurrent batches
-- never wait on each other for a hot rollup row. `herald_report_rollup` (run every second by each
-- Herald process) folds pending rows into the rollups; reports read both, so they are exact at
-- any moment.

-- When the API accepted the recipient's request: the start of the accept→sent latency.
ALTER TABLE deliveries ADD COLUMN accepted_at timestamptz;

CREATE TABLE report_counts (
    campaign_id  uuid NOT NULL,
    channel      text NOT NULL,
    minute       timestamptz NOT NULL,
    -- targeted | sent | failed | excluded | unknown | retry | dead_lettered
    event        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    count        bigint NOT NULL,
    PRIMARY KEY (campaign_id, minute, channel, event, reason)
);
CREATE INDEX report_counts_by_minute ON report_counts (minute);

-- Accept→sent latency histogram: bucket b holds latencies in [1.1^b, 1.1^(b+1)) milliseconds, so
-- a percentile read from it is within 10% of the exact one.
CREATE TABLE report_latency (
    campaign_id  uuid NOT NULL,
    channel      text NOT NULL,
    minute       timestamptz NOT NULL,
    bucket       smallint NOT NULL,
    count        bigint NOT NULL,
    PRIMARY KEY (campaign_id, minute, channel, bucket)
);
CREATE INDEX report_latency_by_minute ON report_latency (minute);

-- The same per hour, for long windows: a year of a busy campaign is 9k hourly rows, not 500k.
CREATE TABLE report_counts_hourly (
    campaign_id  uuid NOT NULL,
    channel      text NOT NULL,
    hour         timestamptz NOT NULL,
    event        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    count        bigint NOT NULL,
    PRIMARY KEY (campaign_id, hour, channel, event, reason)
);
CREATE INDEX report_counts_hourly_by_hour ON report_counts_hourly (hour);

CREATE TABLE report_latency_hourly (
    campaign_id  uuid NOT NULL,
    channel      text NOT NULL,
    hour         timestamptz NOT NULL,
    bucket       smallint NOT NULL,
    count        bigint NOT NULL,
    PRIMARY KEY (campaign_id, hour, channel, bucket)
);
CREATE INDEX report_latency_hourly_by_hour ON report_latency_hourly (hour);

-- Outcomes written but not yet folded into the rollups. `event` 'latency' rows carry a latency
-- histogram bucket; the others a report_counts key.
CREATE TABLE report_pending (
    id           bigserial PRIMARY KEY,
    campaign_id  uuid NOT NULL,
    channel      text NOT NULL,
    minute       timestamptz NOT NULL,
    event        text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    bucket       smallint,
    count        bigint NOT NULL
);

CREATE FUNCTION herald_latency_bucket(milliseconds float8) RETURNS smallint
    LANGUAGE sql IMMUTABLE AS $$ SELECT floor(ln(greatest(milliseconds, 1)) / ln(1.1))::smallint $$;

-- One outcome, as the delivery triggers see it.
CREATE TYPE herald_report_change AS (
    campaign_id uuid, channel text, minute timestamptz, status text, reason text, retries integer, latency_ms float8
);

-- Appends the outcomes of one statement on `deliveries`, aggregated, to report_pending.
-- PL/pgSQL so that the plans of its statements are cached per connection.
CREATE FUNCTION herald_report_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changes herald_report_change[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        changes := ARRAY(
            SELECT ROW(n.campaign_id, n.channel, date_trunc('minute', n.updated_at), n.status, coalesce(n.reason, ''), 0, NULL)::herald_report_change
              FROM new_rows n
             WHERE n.status IN ('sent', 'failed', 'excluded', 'unknown') AND n.campaign_id IS NOT NULL);
    ELSE
        -- Only outcomes of work: a claim (→ sending) and a replay (failed → retrying) are not.
        changes := ARRAY(
            SELECT ROW(n.campaign_id, n.channel, date_trunc('minute', n.updated_at), n.status, coalesce(n.reason, ''),
                       -- Provider calls beyond each delivery's first one.
                       (n.attempts - o.attempts) - CASE WHEN o.attempts = 0 AND n.attempts > 0 THEN 1 ELSE 0 END,
                       CASE WHEN n.status = 'sent' AND n.accepted_at IS NOT NULL
                            THEN extract(epoch FROM n.updated_at - n.accepted_at) * 1000 END)::herald_report_change
              FROM new_rows n JOIN old_rows o USING (execution_id, recipient_index)
             WHERE o.status IN ('sending', 'retrying') AND n.status NOT IN ('sending', o.status)
               AND n.campaign_id IS NOT NULL);
    END IF;
    IF cardinality(changes) = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO report_pending (campaign_id, minute, channel, event, reason, count)
    SELECT e.campaign_id, e.minute, e.channel, e.event, e.reason, sum(e.n)
      FROM (SELECT c.campaign_id, c.minute, c.channel, c.status AS event,
                   CASE WHEN c.status = 'sent' THEN '' ELSE c.reason END AS reason, 1 AS n
              FROM unnest(changes) AS c WHERE c.status IN ('sent', 'failed', 'excluded', 'unknown')
            UNION ALL
            SELECT c.campaign_id, c.minute, c.channel, 'retry', '', c.retries FROM unnest(changes) AS c WHERE c.retries > 0) AS e
     GROUP BY e.campaign_id, e.minute, e.channel, e.event, e.reason;
    INSERT INTO report_pending (campaign_id, minute, channel, event, bucket, count)
    SELECT c.campaign_id, c.minute, c.channel, 'latency', herald_latency_bucket(c.latency_ms), count(*)
      FROM unnest(changes) AS c WHERE c.latency_ms IS NOT NULL
     GROUP BY 1, 2, 3, 5;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_report_inserted AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_report_deliveries();
CREATE TRIGGER deliveries_report_updated AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_report_deliveries();

-- Targeted: every recipient of an execution once the broker confirmed all its messages.
CREATE FUNCTION herald_report_executions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO report_pending (campaign_id, minute, channel, event, reason, count)
    SELECT n.campaign_id, date_trunc('minute', n.accepted_at), c.channel, 'targeted', '', sum(jsonb_array_length(n.recipients))
      FROM new_rows n JOIN old_rows o USING (execution_id) JOIN campaigns c ON c.id = n.campaign_id
     WHERE n.state = 'accepted' AND o.state = 'accepting'
     GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE TRIGGER executions_report_accepted AFTER UPDATE ON executions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_report_executions();

-- A dead letter counts when it is recorded, and again when a replayed message comes back to the
-- dead-letter queue (record_dead_letter updates the replayed row); a duplicate copy of the same
-- dead letter changes nothing and counts nothing.
CREATE FUNCTION herald_report_dead_letters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO report_pending (campaign_id, minute, channel, event, reason, count)
        SELECT campaign_id, date_trunc('minute', dead_lettered_at), channel, 'dead_lettered', reason, count(*)
          FROM new_rows WHERE campaign_id IS NOT NULL
         GROUP BY 1, 2, 3, 5;
    ELSE
        INSERT INTO report_pending (campaign_id, minute, channel, event, reason, count)
        SELECT n.campaign_id, date_trunc('minute', n.dead_lettered_at), n.channel, 'dead_lettered', n.reason, count(*)
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE n.campaign_id IS NOT NULL AND o.replayed_at IS NOT NULL AND n.replayed_at IS NULL
           AND n.dead_lettered_at IS DISTINCT FROM o.dead_lettered_at
         GROUP BY 1, 2, 3, 5;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER dead_letters_report_inserted AFTER INSERT ON dead_letters
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_report_dead_letters();
CREATE TRIGGER dead_letters_report_dead_lettered_again AFTER UPDATE ON dead_letters
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_report_dead_letters();

-- Folds up to `max_rows` pending rows into the rollups and returns how many it took. Concurrent
-- callers take disjoint rows (SKIP LOCKED) and upsert in primary-key order, so they cannot deadlock.
CREATE FUNCTION herald_report_rollup(max_rows integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    taken bigint;
BEGIN
    WITH moved AS (
        DELETE FROM report_pending
         WHERE id IN (SELECT id FROM report_pending ORDER BY id LIMIT max_rows FOR UPDATE SKIP LOCKED)
        RETURNING campaign_id, channel, minute, event, reason, bucket, count
    ), counted AS (
        INSERT INTO report_counts AS r (campaign_id, minute, channel, event, reason, count)
        SELECT campaign_id, minute, channel, event, reason, sum(count) FROM moved WHERE event <> 'latency'
         GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (campaign_id, minute, channel, event, reason) DO UPDATE SET count = r.count + EXCLUDED.count
        RETURNING 1
    ), timed AS (
        INSERT INTO report_latency AS r (campaign_id, minute, channel, bucket, count)
        SELECT campaign_id, minute, channel, bucket, sum(count) FROM moved WHERE event = 'latency'
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (campaign_id, minute, channel, bucket) DO UPDATE SET count = r.count + EXCLUDED.count
        RETURNING 1
    ), counted_hourly AS (
        INSERT INTO report_counts_hourly AS r (campaign_id, hour, channel, event, reason, count)
        SELECT campaign_id, date_trunc('hour', minute), channel, event, reason, sum(count) FROM moved WHERE event <> 'latency'
         GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (campaign_id, hour, channel, event, reason) DO UPDATE SET count = r.count + EXCLUDED.count
        RETURNING 1
    ), timed_hourly AS (
        INSERT INTO report_latency_hourly AS r (campaign_id, hour, channel, bucket, count)
        SELECT campaign_id, date_trunc('hour', minute), channel, bucket, sum(count) FROM moved WHERE event = 'latency'
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (campaign_id, hour, channel, bucket) DO UPDATE SET count = r.count + EXCLUDED.count
        RETURNING 1
    )
    SELECT count(*) INTO taken FROM moved;
    RETURN taken;
END $$;

-- What happened before this migration, from the records that remain (executions older than their
-- 48 h idempotency window are gone, so their recipients count as targeted when first delivered).
INSERT INTO report_counts (campaign_id, minute, channel, event, reason, count)
SELECT campaign_id, date_trunc('minute', created_at), channel, 'targeted', '', count(*)
  FROM deliveries WHERE campaign_id IS NOT NULL GROUP BY 1, 2, 3;
INSERT INTO report_counts AS r (campaign_id, minute, channel, event, reason, count)
SELECT campaign_id, date_trunc('minute', updated_at), channel, status, CASE WHEN status = 'sent' THEN '' ELSE coalesce(reason, '') END, count(*)
  FROM deliveries WHERE campaign_id IS NOT NULL AND status IN ('sent', 'failed', 'excluded', 'unknown') GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (campaign_id, minute, channel, event, reason) DO UPDATE SET count = r.count + EXCLUDED.count;
INSERT INTO report_counts AS r (campaign_id, minute, channel, event, reason, count)
SELECT campaign_id, date_trunc('minute', dead_lettered_at), channel, 'dead_lettered', reason, count(*)
  FROM dead_letters WHERE campaign_id IS NOT NULL GROUP BY 1, 2, 3, 5
ON CONFLICT (campaign_id, minute, channel, event, reason) DO UPDATE SET count = r.count + EXCLUDED.count;
INSERT INTO report_counts_hourly (campaign_id, hour, channel, event, reason, count)
SELECT campaign_id, date_trunc('hour', minute), channel, event, reason, sum(count) FROM report_counts GROUP BY 1, 2, 3, 4, 5;
