-- Send-rate limits shared by every worker: each key holds the next free send slot (GCRA).
CREATE TABLE rate_limits (
    key        text PRIMARY KEY,
    next_slot  timestamptz NOT NULL
);
