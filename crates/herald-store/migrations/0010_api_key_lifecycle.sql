-- Key lifecycle (issue #11): list, revoke and rotate keys, retire a changed bootstrap key, show a
-- key's prefix and when it was last used, and store operator-chosen keys with a slow hash.

-- Operator-chosen keys (the bootstrap key) are stored as an Argon2id PHC string in `key_kdf` and
-- have no fast `key_hash`; generated 256-bit keys keep their SHA-256 there.
ALTER TABLE api_keys ALTER COLUMN key_hash DROP NOT NULL;
ALTER TABLE api_keys ADD COLUMN key_kdf text;
-- `hk_` and the first 8 hex digits of a generated key: tells keys apart without the secret.
-- Never set for a chosen key, whose first characters would help guess it.
ALTER TABLE api_keys ADD COLUMN prefix text;
-- The key registered from HERALD_BOOTSTRAP_API_KEY; registering another one revokes it.
ALTER TABLE api_keys ADD COLUMN bootstrap boolean NOT NULL DEFAULT false;
-- Written at most about once a minute per key, on a cache miss (never per request).
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
-- The key a rotation replaced this one with.
ALTER TABLE api_keys ADD COLUMN replaced_by uuid REFERENCES api_keys (id);

-- Every key that can still authenticate has a way to be checked.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_verifier
    CHECK (revoked_at IS NOT NULL OR key_hash IS NOT NULL OR key_kdf IS NOT NULL);

-- Earlier releases registered the bootstrap key under this name.
UPDATE api_keys SET bootstrap = true WHERE name = 'bootstrap';

CREATE INDEX api_keys_by_sandbox ON api_keys (sandbox, id);
CREATE INDEX api_keys_bootstrap ON api_keys (created_at) WHERE bootstrap;
