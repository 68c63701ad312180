-- Audiences (a filter over stored profiles, or an uploaded list), and audience executions: the
-- durable fan-out of one campaign to an audience, now or at a scheduled time.

CREATE TABLE audiences (
    id           uuid PRIMARY KEY,
    sandbox      text NOT NULL,
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('filter', 'list')),
    -- The parsed predicate of a filter audience (herald_core::audience::filter), as given.
    filter       jsonb,
    -- Members are read from this generation; 0 until the first computation or upload. A new
    -- computation or upload writes the next generation, so a fan-out reading an older one keeps
    -- its recipients and their positions.
    generation   integer NOT NULL DEFAULT 0,
    size         bigint NOT NULL DEFAULT 0,
    computed_at  timestamptz,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    UNIQUE (sandbox, name)
);

CREATE TABLE audience_members (
    audience_id  uuid NOT NULL REFERENCES audiences (id) ON DELETE CASCADE,
    generation   integer NOT NULL,
    -- 0-based position in the generation: the recipient index of the delivery, so that a resumed
    -- page publishes the same message ids again.
    seq          integer NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('aep', 'external')),
    namespace    text NOT NULL,
    user_id      text NOT NULL,
    PRIMARY KEY (audience_id, generation, seq)
);

CREATE TABLE audience_executions (
    execution_id  uuid PRIMARY KEY,
    -- Set when the request named a future `schedule.executeAt`.
    schedule_id   uuid UNIQUE,
    sandbox       text NOT NULL,
    campaign_id   uuid NOT NULL,
    request_id    text NOT NULL,
    body_hash     bytea NOT NULL,
    audience_id   uuid NOT NULL,
    context       jsonb NOT NULL,
    -- scheduled → running (fired) → succeeded | failed; scheduled → cancelled.
    status        text NOT NULL CHECK (status IN ('scheduled', 'cancelled', 'running', 'succeeded', 'failed')),
    -- Why it failed or stopped early: the reason its unreached recipients were excluded with.
    failure       text,
    execute_at    timestamptz NOT NULL,
    fired_at      timestamptz,
    -- How late the schedule fired (after a restart, say), in milliseconds.
    late_ms       bigint,
    -- After this, recipients not yet published are excluded (AJO's 12 h rule).
    deadline      timestamptz,
    -- The audience generation the fan-out sends to, and its size: set once, when it starts.
    generation    integer,
    targeted      bigint,
    -- The next member position to publish; every position before it is confirmed by the broker.
    -- Positions are dense, so it is also how many were published; on a failed fan-out, those
    -- from it on were recorded excluded without a message.
    cursor        integer NOT NULL DEFAULT 0,
    -- The instance publishing it, until when; another takes it over once the lease has passed.
    lease_owner   uuid,
    lease_until   timestamptz,
    created_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    UNIQUE (sandbox, campaign_id, request_id)
);
CREATE INDEX audience_executions_due ON audience_executions (execute_at) WHERE status = 'scheduled';
CREATE INDEX audience_executions_running ON audience_executions (lease_until) WHERE status = 'running';
CREATE INDEX audience_executions_by_campaign ON audience_executions (sandbox, campaign_id, created_at);
CREATE INDEX audience_executions_by_audience ON audience_executions (audience_id) WHERE status IN ('scheduled', 'running');
