-- A request id names one request per (sandbox, campaign), whichever endpoint took it: a unitary
-- claim of a key an audience execution holds claims nothing (the caller answers 422), as an
-- audience execution refuses a key a unitary execution holds (Store::claim_audience_execution).
CREATE OR REPLACE FUNCTION herald_claim_executions(uuid[], text[], uuid[], text[], bytea[], jsonb[], timestamptz[], timestamptz[])
    RETURNS SETOF uuid LANGUAGE plpgsql
    SET plan_cache_mode = auto SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
BEGIN
    RETURN QUERY
    INSERT INTO executions (execution_id, sandbox, campaign_id, request_id, body_hash, state, recipients, created_at, lease_until)
    SELECT e, s, c, r, h, 'accepting', rc, ca, lu
      FROM UNNEST($1, $2, $3, $4, $5, $6, $7, $8) AS t(e, s, c, r, h, rc, ca, lu)
     WHERE NOT EXISTS (SELECT 1 FROM audience_executions a WHERE a.sandbox = s AND a.campaign_id = c AND a.request_id = r)
    ON CONFLICT (sandbox, campaign_id, request_id) DO NOTHING
    RETURNING executions.execution_id;
END $$;
