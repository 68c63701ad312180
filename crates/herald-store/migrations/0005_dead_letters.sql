-- Dead letters, copied out of the broker's dead-letter queue by workers so operators can list,
-- filter and replay them. The body is the message as it was dead-lettered.
CREATE TABLE dead_letters (
    id               uuid PRIMARY KEY,
    message_id       text NOT NULL UNIQUE,
    sandbox          text,
    campaign_id      uuid,
    execution_id     uuid,
    recipient_index  integer,
    channel          text NOT NULL,
    reason           text NOT NULL,
    last_error       text,
    body             bytea NOT NULL,
    dead_lettered_at timestamptz NOT NULL,
    replayed_at      timestamptz,
    replays          integer NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_by_sandbox ON dead_letters (sandbox, dead_lettered_at);
