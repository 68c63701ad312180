-- Executions (the idempotency record of each accepted request) and deliveries (one outcome
-- per recipient, written by workers).

CREATE TABLE executions (
    execution_id  uuid PRIMARY KEY,
    sandbox       text NOT NULL,
    campaign_id   uuid NOT NULL,
    request_id    text NOT NULL,
    -- SHA-256 of the canonical request body: the same id with another body is refused.
    body_hash     bytea NOT NULL,
    -- 'accepting' while messages are being confirmed by the broker; 'accepted' once all are.
    state         text NOT NULL CHECK (state IN ('accepting', 'accepted')),
    -- [{userId, type, namespace, address (masked)}], in request order.
    recipients    jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    accepted_at   timestamptz,
    -- While 'accepting', a retry before this instant is "in progress"; after it, the retry
    -- takes the execution over and republishes it.
    lease_until   timestamptz NOT NULL,
    UNIQUE (sandbox, campaign_id, request_id)
);
CREATE INDEX executions_by_age ON executions (created_at);

CREATE TABLE deliveries (
    execution_id         uuid NOT NULL,
    recipient_index      integer NOT NULL,
    status               text NOT NULL CHECK (status IN ('sending', 'sent', 'failed', 'excluded', 'unknown')),
    reason               text,
    attempts             integer NOT NULL DEFAULT 0,
    campaign_version_id  uuid,
    provider_message_id  text,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (execution_id, recipient_index)
);
