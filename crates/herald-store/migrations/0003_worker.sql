-- What workers need: a retry state for deliveries, claim tokens, and push endpoints.

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('sending', 'retrying', 'sent', 'failed', 'excluded', 'unknown'));
-- Which worker attempt holds a 'sending' claim; outcomes are written only by that holder.
ALTER TABLE deliveries ADD COLUMN claim_token uuid;
ALTER TABLE deliveries ADD COLUMN claimed_at timestamptz;
ALTER TABLE deliveries ADD COLUMN campaign_id uuid;
ALTER TABLE deliveries ADD COLUMN channel text;
ALTER TABLE deliveries ADD COLUMN last_error text;
CREATE INDEX deliveries_by_campaign ON deliveries (campaign_id, updated_at);

-- SNS platform endpoints, created once per (application, token) and reused.
CREATE TABLE push_endpoints (
    sandbox          text NOT NULL,
    application_arn  text NOT NULL,
    token            text NOT NULL,
    endpoint_arn     text NOT NULL,
    disabled_at      timestamptz,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (sandbox, application_arn, token)
);
