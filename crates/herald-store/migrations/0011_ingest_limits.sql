-- Execution limits shared by every API process (issue #11), counted in recipients.
--
-- Rates reuse `rate_limits`: next_slot is the bucket's theoretical arrival time (GCRA), as for the
-- workers' send slots. An API process leases a block of tokens at a time and spends it locally,
-- so the database sees one statement per block, not one per request.

-- Takes `need` to `want` tokens from `bucket` (a token every `spacing` seconds, at most `burst`
-- banked), all or nothing for `need`. Answers how many were granted and, when none, how many
-- were available (a fraction), from which the caller works out when to come back.
CREATE FUNCTION herald_lease_tokens(
    bucket text, spacing float8, burst float8, need integer, want integer,
    OUT granted integer, OUT available float8
) LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz := clock_timestamp();
    tat timestamptz;
BEGIN
    INSERT INTO rate_limits (key, next_slot) VALUES (bucket, at) ON CONFLICT (key) DO NOTHING;
    SELECT greatest(next_slot, at) INTO tat FROM rate_limits WHERE key = bucket FOR UPDATE;
    -- A millionth of a token of slack: the interval arithmetic rounds to microseconds.
    available := burst - EXTRACT(EPOCH FROM (tat - at)) / spacing + 1e-6;
    IF available >= need THEN
        granted := least(want, floor(available)::integer);
        UPDATE rate_limits SET next_slot = tat + make_interval(secs => granted * spacing) WHERE key = bucket;
        available := available - granted;
    ELSE
        granted := 0;
    END IF;
END $$;

-- Recipients accepted (or leased to an API process) per sandbox, channel and UTC day.
CREATE TABLE daily_quotas (
    sandbox  text NOT NULL,
    channel  text NOT NULL,
    day      date NOT NULL,
    used     bigint NOT NULL,
    PRIMARY KEY (sandbox, channel, day)
);

-- Takes `need` to `want` of the day's `quota`, all or nothing for `need`. Answers how many were
-- granted and how many are left after that.
CREATE FUNCTION herald_lease_quota(
    quota_sandbox text, quota_channel text, quota_day date, quota bigint, need bigint, want bigint,
    OUT granted bigint, OUT remaining bigint
) LANGUAGE plpgsql AS $$
DECLARE
    spent bigint;
BEGIN
    INSERT INTO daily_quotas (sandbox, channel, day, used) VALUES (quota_sandbox, quota_channel, quota_day, 0)
        ON CONFLICT (sandbox, channel, day) DO NOTHING;
    SELECT used INTO spent FROM daily_quotas
        WHERE sandbox = quota_sandbox AND channel = quota_channel AND day = quota_day FOR UPDATE;
    IF quota - spent >= need THEN
        granted := least(want, quota - spent);
        UPDATE daily_quotas SET used = used + granted
            WHERE sandbox = quota_sandbox AND channel = quota_channel AND day = quota_day;
    ELSE
        granted := 0;
    END IF;
    remaining := greatest(quota - spent - granted, 0);
END $$;
