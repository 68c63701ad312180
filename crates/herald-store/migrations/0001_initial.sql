-- Campaigns, their versions, profiles and API keys.

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    sandbox     text NOT NULL,
    name        text,
    -- SHA-256 of the key; the key itself is shown once and never stored.
    key_hash    bytea NOT NULL UNIQUE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE TABLE campaigns (
    id                uuid PRIMARY KEY,
    sandbox           text NOT NULL,
    name              text NOT NULL,
    description       text,
    channel           text NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    -- scheduled, live and completed are computed from live_start/live_end and the clock.
    state             text NOT NULL CHECK (state IN ('draft', 'active', 'stopped', 'archived')),
    live_version_id   uuid,
    draft_version_id  uuid,
    live_start        timestamptz,
    live_end          timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    activated_at      timestamptz,
    stopped_at        timestamptz,
    archived_at       timestamptz,
    UNIQUE (sandbox, name),
    CHECK (state <> 'draft' OR live_version_id IS NULL),
    CHECK (state = 'draft' OR live_version_id IS NOT NULL)
);
CREATE INDEX campaigns_by_sandbox ON campaigns (sandbox, created_at, id);

CREATE TABLE campaign_versions (
    id            uuid PRIMARY KEY,
    campaign_id   uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    number        integer NOT NULL,
    definition    jsonb NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    activated_at  timestamptz,
    UNIQUE (campaign_id, number)
);

ALTER TABLE campaigns
    ADD FOREIGN KEY (live_version_id) REFERENCES campaign_versions (id) DEFERRABLE INITIALLY DEFERRED,
    ADD FOREIGN KEY (draft_version_id) REFERENCES campaign_versions (id) DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE profiles (
    sandbox        text NOT NULL,
    namespace      text NOT NULL,
    user_id        text NOT NULL,
    attributes     jsonb NOT NULL DEFAULT '{}',
    email_address  text,
    phone_number   text,
    push_tokens    jsonb NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (sandbox, namespace, user_id)
);
