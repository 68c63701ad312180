-- After the send (issue #14): what the provider said about a sent message, the per-sandbox
-- suppression list it feeds, and the claim that consults that list.

-- A sent delivery's feedback moves only up herald_core::feedback::FeedbackStatus::rank; `status`
-- stays `sent` (the outcome of Herald's work), so claims and retries are untouched.
ALTER TABLE deliveries ADD COLUMN feedback text
    CHECK (feedback IN ('delayed', 'delivered', 'bounced', 'rejected', 'complained'));
-- Bounce type/subtype, complaint feedback type, delay type.
ALTER TABLE deliveries ADD COLUMN feedback_detail text;
ALTER TABLE deliveries ADD COLUMN feedback_at timestamptz;
-- Feedback finds its delivery by the SES message id. (This makes the outcome write, which sets
-- the id, a non-HOT update; feedback writes stay HOT.)
CREATE INDEX deliveries_by_provider_message ON deliveries (provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Every feedback event taken in, by its identity at SES: SNS and SQS deliver at least once, and
-- a second copy must count nothing. Kept for HERALD_FEEDBACK_RETENTION_DAYS.
CREATE TABLE feedback_events (
    event_key    text PRIMARY KEY,
    event_type   text NOT NULL,
    matched      boolean NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX feedback_events_by_age ON feedback_events (received_at);

-- Addresses not to send to, per sandbox and channel (emails lower-cased, phones E.164).
CREATE TABLE suppressions (
    sandbox     text NOT NULL,
    channel     text NOT NULL CHECK (channel IN ('email', 'sms', 'push')),
    address     text NOT NULL,
    reason      text NOT NULL CHECK (reason IN ('hard-bounce', 'complaint', 'opted-out', 'manual')),
    -- What put it there: the SES feedback event, the provider error, or `api`.
    source      text NOT NULL,
    detail      text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (sandbox, channel, address)
);

-- How strong a suppression is: a hard bounce, an opt-out or an operator's entry is never
-- overridden; a complaint is, by a transactional campaign that opts in.
CREATE FUNCTION herald_suppression_rank(reason text) RETURNS int LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE reason WHEN 'complaint' THEN 1 ELSE 2 END $$;

-- The claim of migration 0014 that also consults the suppression list, in the same statement
-- (no extra round trip per message or per batch): a row whose address ($9 sandbox, $10 address;
-- NULL when the channel has no suppression) is suppressed is written `excluded`/`suppressed`
-- instead of `sending`, and returned with `suppressed` true, so it is never handed to a provider.
-- $11: the campaign sends to addresses suppressed only for a complaint.
CREATE FUNCTION herald_claim_deliveries(uuid[], int[], uuid[], uuid[], text[], uuid[], timestamptz[], timestamptz[],
                                        text[], text[], boolean[])
    RETURNS TABLE (token uuid, earlier_attempts int, suppressed boolean) LANGUAGE plpgsql
    SET plan_cache_mode = auto SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    RETURN QUERY
    INSERT INTO deliveries AS d (execution_id, recipient_index, status, reason, attempts, campaign_version_id, campaign_id,
                                 channel, claim_token, claimed_at, created_at, updated_at, accepted_at)
    SELECT u.e, u.i, CASE WHEN s.address IS NULL THEN 'sending' ELSE 'excluded' END,
           CASE WHEN s.address IS NULL THEN NULL ELSE 'suppressed' END, 0, u.v, u.c, u.ch, u.t, u.n, u.n, u.n, u.a
      FROM UNNEST($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS u(e, i, v, c, ch, t, n, a, sb, addr, allow_complained)
      LEFT JOIN suppressions s
        ON u.addr IS NOT NULL AND s.sandbox = u.sb AND s.channel = u.ch AND s.address = u.addr
       AND (NOT u.allow_complained OR herald_suppression_rank(s.reason) > 1)
     ORDER BY u.e, u.i
    ON CONFLICT (execution_id, recipient_index) DO UPDATE
       SET status = EXCLUDED.status, claim_token = EXCLUDED.claim_token, claimed_at = EXCLUDED.claimed_at,
           campaign_version_id = EXCLUDED.campaign_version_id, updated_at = EXCLUDED.updated_at,
           call_started_at = NULL,
           reason = CASE WHEN EXCLUDED.status = 'excluded' THEN EXCLUDED.reason ELSE d.reason END
     WHERE d.status = 'retrying' AND (d.not_before IS NULL OR d.not_before <= now())
    RETURNING d.claim_token, d.attempts, d.status = 'excluded';
END $$;
