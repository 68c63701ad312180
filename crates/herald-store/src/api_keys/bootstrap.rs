//! Operator-chosen keys: the bootstrap key from `HERALD_BOOTSTRAP_API_KEY`.
//!
//! Such a key may be guessable (`hk_local_development_only`), so it is stored as Argon2id
//! (OWASP's parameters: 19 MiB, 2 passes), never as a fast hash, and one shorter than
//! [`MIN_CHOSEN_KEY_CHARS`] is refused. Argon2 costs tens of milliseconds, so it is kept off the
//! hot path: a presented key of the generated shape never reaches it; a chosen one is checked
//! only against the (one) active bootstrap row; each answer is remembered (it never changes); and
//! one check runs at a time, off the async runtime.
//!
//! Registering a bootstrap key revokes every other bootstrap key, so changing the setting retires
//! the old key everywhere. A key that was revoked stays revoked: configuring it again registers
//! nothing (and retires nothing, so an old-configuration process restarting mid-rollout cannot
//! retire the new key).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use herald_core::Scope;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{ApiKeyRecord, REVOKE_SET, digest, is_generated, notify, parse_scopes, scope_names, shown_prefix};
use crate::{Store, StoreError};

/// A chosen key shorter than this is refused: Argon2 slows guessing down, it cannot make a
/// six-character key safe. (`hk_local_development_only` has 25.)
pub const MIN_CHOSEN_KEY_CHARS: usize = 12;
/// Longer keys are refused too: Argon2's input is unbounded, a header is not worth it.
const MAX_KEY_CHARS: usize = 512;
/// How long a lookup waits for the Argon2 slot before answering "unavailable" (503).
const KDF_WAIT: Duration = Duration::from_secs(2);
/// Remembered (bootstrap row, presented key) answers before the memo starts over.
const MEMO_CAPACITY: usize = 4_096;
/// Bootstrap rows looked at when registering: the newest, active ones first.
const REGISTRATION_CANDIDATES: i64 = 16;
/// Serialises bootstrap registrations of API processes starting at once.
const BOOTSTRAP_LOCK_KEY: i64 = 0x0048_4552_414c_444b; // "HERALDK"

/// What registering the configured bootstrap key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapOutcome {
    /// A new bootstrap key; `retired` previous ones were revoked.
    Registered { id: Uuid, retired: usize },
    /// It was registered already (its scopes and sandbox brought up to date); `retired` others.
    Kept { id: Uuid, retired: usize },
    /// It was revoked (rotated, revoked, or retired by a newer bootstrap key): nothing changed.
    Revoked { id: Uuid },
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// One Argon2 computation at a time per process: a flood of chosen-shape garbage keys costs one
/// core at most, and what waits too long is answered 503 rather than piling up.
fn kdf_slot() -> &'static Semaphore {
    static SLOT: OnceLock<Semaphore> = OnceLock::new();
    SLOT.get_or_init(|| Semaphore::new(1))
}

/// (bootstrap row, SHA-256 of a presented key) → whether they match.
type Memo = Mutex<HashMap<(Uuid, Vec<u8>), bool>>;

/// A row's verifier never changes to another key, so an answer stays true; memory only.
fn memo() -> &'static Memo {
    static MEMO: OnceLock<Memo> = OnceLock::new();
    MEMO.get_or_init(Mutex::default)
}

async fn run_kdf<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, StoreError> {
    let _permit = tokio::time::timeout(KDF_WAIT, kdf_slot().acquire())
        .await
        .map_err(|_| StoreError::Unavailable("API key verification is busy".into()))?
        .map_err(|_| StoreError::Unavailable("API key verification stopped".into()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Unavailable(format!("API key verification failed: {error}")))
}

/// The Argon2id PHC string of `key`, with a random salt.
async fn hash_chosen(key: &str) -> Result<String, StoreError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|error| StoreError::Config(format!("no randomness: {error}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| StoreError::Config(error.to_string()))?;
    let key = key.to_string();
    run_kdf(move || argon2().hash_password(key.as_bytes(), &salt).map(|hash| hash.to_string()))
        .await?
        .map_err(|error| StoreError::Config(format!("hashing the bootstrap key: {error}")))
}

/// Whether `key` is the one bootstrap row `id` stores (as `kdf`, or as a pre-#11 SHA-256).
async fn matches(id: Uuid, key: &str, sha: Option<&[u8]>, kdf: Option<&str>) -> Result<bool, StoreError> {
    let presented = digest(key);
    if let Some(sha) = sha {
        return Ok(sha == presented.as_slice());
    }
    let Some(kdf) = kdf else { return Ok(false) };
    if let Some(known) = memo().lock().unwrap_or_else(|p| p.into_inner()).get(&(id, presented.clone())) {
        return Ok(*known);
    }
    let (key, kdf) = (key.to_string(), kdf.to_string());
    let matched = run_kdf(move || {
        PasswordHash::new(&kdf).is_ok_and(|hash| argon2().verify_password(key.as_bytes(), &hash).is_ok())
    })
    .await?;
    let mut memo = memo().lock().unwrap_or_else(|p| p.into_inner());
    if memo.len() >= MEMO_CAPACITY {
        memo.clear();
    }
    memo.insert((id, presented), matched);
    Ok(matched)
}

/// Why `key` cannot be a bootstrap key, if it cannot.
pub fn refusal(key: &str) -> Option<String> {
    let chars = key.chars().count();
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("the bootstrap API key must not contain spaces or control characters".into())
    } else if !is_generated(key) && chars < MIN_CHOSEN_KEY_CHARS {
        Some(format!("the bootstrap API key must have at least {MIN_CHOSEN_KEY_CHARS} characters"))
    } else if chars > MAX_KEY_CHARS {
        Some(format!("the bootstrap API key must have at most {MAX_KEY_CHARS} characters"))
    } else {
        None
    }
}

impl Store {
    /// Looks up a presented key that is not of the generated shape: only a bootstrap key can be.
    pub(super) async fn find_chosen_key(&self, key: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        // The query comes first, so a database outage is a 503 whatever the key looks like.
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, sandbox, scopes, last_used_at, key_hash, key_kdf FROM api_keys \
                 WHERE bootstrap AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 4",
                &[],
            )
            .await?;
        if refusal(key).is_some() {
            return Ok(None);
        }
        for row in &rows {
            let sha: Option<Vec<u8>> = row.get(4);
            let kdf: Option<String> = row.get(5);
            if matches(row.get(0), key, sha.as_deref(), kdf.as_deref()).await? {
                return Ok(Some(ApiKeyRecord {
                    id: row.get(0),
                    sandbox: row.get(1),
                    scopes: parse_scopes(&row.get::<_, Vec<String>>(2)),
                    last_used_at: row.get(3),
                }));
            }
        }
        Ok(None)
    }

    /// Registers `key` as the all-scopes bootstrap key of `sandbox` and revokes every other
    /// bootstrap key, notifying each change. See the module documentation.
    pub async fn register_bootstrap_key(
        &self,
        sandbox: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(BootstrapOutcome, Vec<Uuid>), StoreError> {
        if let Some(reason) = refusal(key) {
            return Err(StoreError::Config(reason));
        }
        let generated = is_generated(key);
        // Hashed before the lock is taken: other processes starting meanwhile do not wait for it.
        let kdf = if generated { None } else { Some(hash_chosen(key).await?) };
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK_KEY]).await?;
        let known = if generated {
            // Generated-shape keys are found by hash, bootstrap rows or not.
            transaction
                .query_opt("SELECT id, revoked_at IS NOT NULL FROM api_keys WHERE key_hash = $1", &[&digest(key)])
                .await?
                .map(|row| (row.get::<_, Uuid>(0), row.get::<_, bool>(1)))
        } else {
            let rows = transaction
                .query(
                    "SELECT id, revoked_at IS NOT NULL, key_hash, key_kdf FROM api_keys \
                     WHERE bootstrap AND (key_hash IS NOT NULL OR key_kdf IS NOT NULL) \
                     ORDER BY revoked_at IS NULL DESC, created_at DESC LIMIT $1",
                    &[&REGISTRATION_CANDIDATES],
                )
                .await?;
            let mut found = None;
            for row in &rows {
                let (sha, kdf): (Option<Vec<u8>>, Option<String>) = (row.get(2), row.get(3));
                if matches(row.get(0), key, sha.as_deref(), kdf.as_deref()).await? {
                    found = Some((row.get(0), row.get(1)));
                    break;
                }
            }
            found
        };
        let (id, kept) = match known {
            Some((id, true)) => return Ok((BootstrapOutcome::Revoked { id }, Vec::new())),
            Some((id, false)) => {
                // A pre-#11 row of a chosen key gets the slow hash instead of its fast one.
                transaction
                    .execute(
                        "UPDATE api_keys SET sandbox = $2, scopes = $3, bootstrap = true, \
                             name = coalesce(name, 'bootstrap'), key_kdf = coalesce(key_kdf, $4), \
                             key_hash = CASE WHEN $4::text IS NULL THEN key_hash END \
                         WHERE id = $1",
                        &[&id, &sandbox, &scope_names(&Scope::ALL), &kdf],
                    )
                    .await?;
                (id, true)
            }
            None => {
                let id = Uuid::now_v7();
                let sha = generated.then(|| digest(key));
                transaction
                    .execute(
                        "INSERT INTO api_keys (id, sandbox, name, key_hash, key_kdf, prefix, scopes, bootstrap, created_at) \
                         VALUES ($1, $2, 'bootstrap', $3, $4, $5, $6, true, $7)",
                        &[&id, &sandbox, &sha, &kdf, &shown_prefix(key), &scope_names(&Scope::ALL), &now],
                    )
                    .await?;
                (id, false)
            }
        };
        notify(&transaction, id).await?;
        let retired: Vec<Uuid> = transaction
            .query(
                &format!(
                    "UPDATE api_keys SET {REVOKE_SET} WHERE bootstrap AND revoked_at IS NULL AND id <> $1 RETURNING id"
                ),
                &[&id, &now],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        for retired in &retired {
            notify(&transaction, *retired).await?;
        }
        transaction.commit().await?;
        let count = retired.len();
        let outcome = if kept {
            BootstrapOutcome::Kept { id, retired: count }
        } else {
            BootstrapOutcome::Registered { id, retired: count }
        };
        Ok((outcome, retired))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chosen_keys_are_stored_salted_and_slow_and_verify() {
        let (a, b) = (
            hash_chosen("hk_local_development_only").await.unwrap(),
            hash_chosen("hk_local_development_only").await.unwrap(),
        );
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(matches(Uuid::now_v7(), "hk_local_development_only", None, Some(&a)).await.unwrap());
        assert!(!matches(Uuid::now_v7(), "hk_local_development_onlx", None, Some(&a)).await.unwrap());
        assert!(!matches(Uuid::now_v7(), "hk_local_development_only", None, Some("not a hash")).await.unwrap());
    }

    #[test]
    fn short_or_strange_chosen_keys_are_refused() {
        assert!(refusal("hk_local_development_only").is_none());
        assert!(refusal(&crate::api_keys::generate_api_key().unwrap()).is_none());
        assert!(refusal("hk_short").unwrap().contains("at least 12"));
        assert!(refusal("hk_with a space").is_some());
        assert!(refusal("hk_with_a_nul_\0_byte").is_some());
        assert!(refusal(&"k".repeat(513)).is_some());
    }
}
