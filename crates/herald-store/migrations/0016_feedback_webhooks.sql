-- Customer feedback webhooks (issue #14): one per sandbox, and a transactional outbox. The
-- outbox is filled by a statement trigger on deliveries, in the transaction that writes the
-- outcome or the feedback, so no event is lost between the write and its publication; a relay in
-- each worker publishes the rows to RabbitMQ (confirmed) and deletes them.

CREATE TABLE feedback_webhooks (
    sandbox          text PRIMARY KEY,
    url              text NOT NULL,
    -- sent | delivered | bounce | complaint | error | excluded
    event_types      text[] NOT NULL,
    channels         text[] NOT NULL,
    -- whsec_<base64>: the Standard Webhooks signing secret, shown once.
    secret           text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    disabled_at      timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

CREATE TABLE webhook_outbox (
    id                   bigserial PRIMARY KEY,
    -- Stable per (delivery, event type): a receiver drops a second copy by it.
    event_id             text NOT NULL,
    sandbox              text NOT NULL,
    event_type           text NOT NULL,
    execution_id         uuid NOT NULL,
    recipient_index      integer NOT NULL,
    campaign_id          uuid NOT NULL,
    campaign_version_id  uuid,
    channel              text NOT NULL,
    reason               text,
    feedback_detail      text,
    attempts             integer NOT NULL,
    created_at           timestamptz NOT NULL
);

-- The webhook event a delivery row change is, if any: a final outcome of Herald's work, or
-- feedback after the send.
CREATE FUNCTION herald_webhook_event(old_status text, new_status text, old_feedback text, new_feedback text)
    RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN new_feedback IS DISTINCT FROM old_feedback THEN
            CASE new_feedback WHEN 'delivered' THEN 'delivered' WHEN 'bounced' THEN 'bounce'
                              WHEN 'complained' THEN 'complaint' WHEN 'rejected' THEN 'error' END
        WHEN new_status IS DISTINCT FROM old_status THEN
            CASE new_status WHEN 'sent' THEN 'sent' WHEN 'failed' THEN 'error' WHEN 'unknown' THEN 'error'
                            WHEN 'excluded' THEN 'excluded' END
    END $$;

CREATE FUNCTION herald_webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One index probe per statement when no sandbox has a webhook (the usual case).
    IF NOT EXISTS (SELECT 1 FROM feedback_webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO webhook_outbox (event_id, sandbox, event_type, execution_id, recipient_index, campaign_id,
                                    campaign_version_id, channel, reason, feedback_detail, attempts, created_at)
        SELECT 'evt_' || md5(n.execution_id::text || ':' || n.recipient_index || ':' || e.kind), c.sandbox, e.kind,
               n.execution_id, n.recipient_index, n.campaign_id, n.campaign_version_id, n.channel, n.reason,
               n.feedback_detail, n.attempts, n.updated_at
          FROM new_rows n
         CROSS JOIN LATERAL (SELECT herald_webhook_event(NULL, n.status, NULL, n.feedback) AS kind) e
          JOIN campaigns c ON c.id = n.campaign_id
          JOIN feedback_webhooks w ON w.sandbox = c.sandbox AND w.enabled
         WHERE e.kind IS NOT NULL AND e.kind = ANY (w.event_types) AND n.channel = ANY (w.channels);
    ELSE
        INSERT INTO webhook_outbox (event_id, sandbox, event_type, execution_id, recipient_index, campaign_id,
                                    campaign_version_id, channel, reason, feedback_detail, attempts, created_at)
        SELECT 'evt_' || md5(n.execution_id::text || ':' || n.recipient_index || ':' || e.kind), c.sandbox, e.kind,
               n.execution_id, n.recipient_index, n.campaign_id, n.campaign_version_id, n.channel, n.reason,
               n.feedback_detail, n.attempts, coalesce(n.feedback_at, n.updated_at)
          FROM new_rows n JOIN old_rows o USING (execution_id, recipient_index)
         CROSS JOIN LATERAL (SELECT herald_webhook_event(o.status, n.status, o.feedback, n.feedback) AS kind) e
          JOIN campaigns c ON c.id = n.campaign_id
          JOIN feedback_webhooks w ON w.sandbox = c.sandbox AND w.enabled
         WHERE e.kind IS NOT NULL AND e.kind = ANY (w.event_types) AND n.channel = ANY (w.channels);
    END IF;
    RETURN NULL;
END $$;
ALTER FUNCTION herald_webhook_outbox() SET enable_seqscan = on SET enable_hashjoin = on SET enable_mergejoin = on;

CREATE TRIGGER deliveries_webhook_inserted AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_webhook_outbox();
CREATE TRIGGER deliveries_webhook_updated AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION herald_webhook_outbox();
