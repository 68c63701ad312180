-- Feedback applies only to the address a delivery was sent to (review of issue #14): an event
-- naming other recipients than the message's own must neither move its status nor suppress
-- anyone. Deliveries keep the SHA-256 of the address as the suppression list spells it (not the
-- address: no contact data in the delivery records); the claim writes it, in the same statement.

ALTER TABLE deliveries ADD COLUMN address_hash bytea;

CREATE OR REPLACE FUNCTION herald_claim_deliveries(uuid[], int[], uuid[], uuid[], text[], uuid[], timestamptz[], timestamptz[],
                                                   text[], text[], boolean[])
    RETURNS TABLE (token uuid, earlier_attempts int, suppressed boolean) LANGUAGE plpgsql
    SET plan_cache_mode = auto SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    RETURN QUERY
    INSERT INTO deliveries AS d (execution_id, recipient_index, status, reason, attempts, campaign_version_id, campaign_id,
                                 channel, claim_token, claimed_at, created_at, updated_at, accepted_at, address_hash)
    SELECT u.e, u.i, CASE WHEN s.address IS NULL THEN 'sending' ELSE 'excluded' END,
           CASE WHEN s.address IS NULL THEN NULL ELSE 'suppressed' END, 0, u.v, u.c, u.ch, u.t, u.n, u.n, u.n, u.a,
           CASE WHEN u.addr IS NULL THEN NULL ELSE sha256(convert_to(u.addr, 'UTF8')) END
      FROM UNNEST($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) AS u(e, i, v, c, ch, t, n, a, sb, addr, allow_complained)
      LEFT JOIN suppressions s
        ON u.addr IS NOT NULL AND s.sandbox = u.sb AND s.channel = u.ch AND s.address = u.addr
       AND (NOT u.allow_complained OR herald_suppression_rank(s.reason) > 1)
     ORDER BY u.e, u.i
    ON CONFLICT (execution_id, recipient_index) DO UPDATE
       SET status = EXCLUDED.status, claim_token = EXCLUDED.claim_token, claimed_at = EXCLUDED.claimed_at,
           campaign_version_id = EXCLUDED.campaign_version_id, updated_at = EXCLUDED.updated_at,
           call_started_at = NULL, address_hash = EXCLUDED.address_hash,
           reason = CASE WHEN EXCLUDED.status = 'excluded' THEN EXCLUDED.reason ELSE d.reason END
     WHERE d.status = 'retrying' AND (d.not_before IS NULL OR d.not_before <= now())
    RETURNING d.claim_token, d.attempts, d.status = 'excluded';
END $$;
