//! API keys: shown once at creation, never stored. A generated key is `hk_` and 256 random bits,
//! stored as its SHA-256: there is nothing to brute-force that a slow hash would protect, and the
//! hash is the lookup index. A key an operator chose (`HERALD_BOOTSTRAP_API_KEY`) may be
//! guessable, so it is stored as Argon2id instead ([`bootstrap`]).
//!
//! Revoking or rotating a key notifies [`API_KEY_CHANGES_CHANNEL`] in the same transaction, so
//! every API process drops its cached copy when the change commits.

pub mod bootstrap;
pub mod listener;

use chrono::{DateTime, Duration, Utc};
use herald_core::Scope;
use sha2::{Digest, Sha256};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{Store, StoreError};

pub use bootstrap::{BootstrapOutcome, MIN_CHOSEN_KEY_CHARS};

/// The PostgreSQL channel key changes are announced on; the payload is the key id.
pub const API_KEY_CHANGES_CHANNEL: &str = "herald_api_key_changes";

const KEY_PREFIX: &str = "hk_";
const GENERATED_HEX_DIGITS: usize = 64;
/// Hex digits of a generated key shown in lists: 32 of its 256 bits, enough to tell keys apart.
const SHOWN_HEX_DIGITS: usize = 8;

/// `last_used_at` is written when it is older than this, so a busy key costs a write a minute.
pub const LAST_USED_RESOLUTION: Duration = Duration::seconds(60);

/// A key as authentication needs it: whose it is and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub sandbox: String,
    pub scopes: Vec<Scope>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A key as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub sandbox: String,
    pub name: Option<String>,
    /// `hk_` and the first hex digits of a generated key; `None` for a chosen key, and for keys
    /// created before the prefix was recorded.
    pub prefix: Option<String>,
    pub scopes: Vec<Scope>,
    pub bootstrap: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<Uuid>,
}

/// A key just made: the secret, shown once, and what is stored about it.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub key: String,
    pub info: ApiKeyInfo,
}

/// The outcome of a change to an existing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange<T> {
    Done(T),
    /// No such key (in the caller's sandbox).
    NotFound,
    /// Rotation of a key already revoked.
    Revoked,
    /// The key holds scopes the caller does not: changing it would act beyond the caller's rights.
    Exceeds(Vec<Scope>),
}

/// A fresh key: `hk_` and 64 hex digits.
pub fn generate_api_key() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| StoreError::Config(format!("no randomness: {error}")))?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{KEY_PREFIX}{hex}"))
}

/// Whether `key` has the shape of a generated key. Such keys are looked up by SHA-256 only, so
/// presenting garbage never costs an Argon2 computation unless it has another shape.
pub fn is_generated(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|hex| {
        hex.len() == GENERATED_HEX_DIGITS && hex.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// What lists show of a generated key; nothing of a chosen one.
pub fn shown_prefix(key: &str) -> Option<String> {
    is_generated(key).then(|| key[..KEY_PREFIX.len() + SHOWN_HEX_DIGITS].to_string())
}

/// The SHA-256 of a key, as stored for generated keys; also usable as a cache key.
pub fn digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn scope_names(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|scope| scope.as_str().to_string()).collect()
}

/// A scope this binary does not know (written by a newer version) grants nothing here.
fn parse_scopes(names: &[String]) -> Vec<Scope> {
    names.iter().filter_map(|name| name.parse().ok()).collect()
}

const INFO_COLUMNS: &str =
    "id, sandbox, name, prefix, scopes, bootstrap, created_at, last_used_at, revoked_at, replaced_by";

fn info(row: &Row) -> ApiKeyInfo {
    ApiKeyInfo {
        id: row.get(0),
        sandbox: row.get(1),
        name: row.get(2),
        prefix: row.get(3),
        scopes: parse_scopes(&row.get::<_, Vec<String>>(4)),
        bootstrap: row.get(5),
        created_at: row.get(6),
        last_used_at: row.get(7),
        revoked_at: row.get(8),
        replaced_by: row.get(9),
    }
}

/// Revoking drops the verifiers that are not safe to keep: a bootstrap row stored before issue
/// #11 (no prefix, no Argon2 hash) holds a fast hash of a possibly guessable key.
const REVOKE_SET: &str = "revoked_at = $2, \
     key_hash = CASE WHEN bootstrap AND key_kdf IS NULL AND prefix IS NULL THEN NULL ELSE key_hash END";

async fn notify(client: &impl deadpool_postgres::GenericClient, id: Uuid) -> Result<(), StoreError> {
    client.execute("SELECT pg_notify($1, $2)", &[&API_KEY_CHANGES_CHANNEL, &id.to_string()]).await?;
    Ok(())
}

async fn insert_generated(
    client: &impl deadpool_postgres::GenericClient,
    sandbox: &str,
    scopes: &[Scope],
    name: Option<&str>,
    now: DateTime<Utc>,
) -> Result<NewApiKey, StoreError> {
    let key = generate_api_key()?;
    let row = client
        .query_one(
            &format!(
                "INSERT INTO api_keys (id, sandbox, name, key_hash, prefix, scopes, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {INFO_COLUMNS}"
            ),
            &[&Uuid::now_v7(), &sandbox, &name, &digest(&key), &shown_prefix(&key), &scope_names(scopes), &now],
        )
        .await?;
    Ok(NewApiKey { key, info: info(&row) })
}

impl Store {
    /// Creates a key for `sandbox` with `scopes` and returns it; it cannot be read back later.
    pub async fn create_api_key(
        &self,
        sandbox: &str,
        scopes: &[Scope],
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        Ok(self.create_api_key_info(sandbox, scopes, name, now).await?.key)
    }

    /// [`Store::create_api_key`], also returning what lists will show of the key.
    pub async fn create_api_key_info(
        &self,
        sandbox: &str,
        scopes: &[Scope],
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<NewApiKey, StoreError> {
        insert_generated(&self.client().await?, sandbox, scopes, name, now).await
    }

    /// Looks a presented key up; `None` for unknown or revoked keys.
    pub async fn find_api_key(&self, key: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        if !is_generated(key) {
            return self.find_chosen_key(key).await;
        }
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, sandbox, scopes, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                &[&digest(key)],
            )
            .await?;
        Ok(row.map(|row| ApiKeyRecord {
            id: row.get(0),
            sandbox: row.get(1),
            scopes: parse_scopes(&row.get::<_, Vec<String>>(2)),
            last_used_at: row.get(3),
        }))
    }

    /// Records that key `id` was used at `now`, unless that was recorded less than
    /// [`LAST_USED_RESOLUTION`] ago (by any process): at most a write a minute per key.
    pub async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE api_keys SET last_used_at = $2 \
                 WHERE id = $1 AND revoked_at IS NULL AND (last_used_at IS NULL OR last_used_at <= $3)",
                &[&id, &now, &(now - LAST_USED_RESOLUTION)],
            )
            .await?;
        Ok(())
    }

    /// Keys in creation order after `after`; of `sandbox` only when given (the CLI lists all).
    pub async fn list_api_keys(
        &self,
        sandbox: Option<&str>,
        include_revoked: bool,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {INFO_COLUMNS} FROM api_keys \
                     WHERE ($1::text IS NULL OR sandbox = $1) AND ($2 OR revoked_at IS NULL) \
                       AND ($3::uuid IS NULL OR id > $3) \
                     ORDER BY id LIMIT $4"
                ),
                &[&sandbox, &include_revoked, &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(info).collect())
    }

    /// Revokes key `id` (of `sandbox` when given) unless it holds scopes outside `within`.
    /// Revoking a revoked key changes nothing and answers it as it is.
    pub async fn revoke_api_key(
        &self,
        sandbox: Option<&str>,
        id: Uuid,
        within: Option<&[Scope]>,
        now: DateTime<Utc>,
    ) -> Result<KeyChange<ApiKeyInfo>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let current = match locked(&transaction, sandbox, id, within).await? {
            Ok(current) => current,
            Err(refusal) => return Ok(refusal),
        };
        if current.revoked_at.is_some() {
            return Ok(KeyChange::Done(current));
        }
        let row = transaction
            .query_one(
                &format!("UPDATE api_keys SET {REVOKE_SET} WHERE id = $1 RETURNING {INFO_COLUMNS}"),
                &[&id, &now],
            )
            .await?;
        notify(&transaction, id).await?;
        transaction.commit().await?;
        Ok(KeyChange::Done(info(&row)))
    }

    /// Replaces key `id` with a new key of the same sandbox, name and scopes, and revokes it, in
    /// one transaction: the old key stops working when the new one is handed out.
    pub async fn rotate_api_key(
        &self,
        sandbox: Option<&str>,
        id: Uuid,
        within: Option<&[Scope]>,
        now: DateTime<Utc>,
    ) -> Result<KeyChange<NewApiKey>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let current = match locked(&transaction, sandbox, id, within).await? {
            Ok(current) => current,
            Err(refusal) => return Ok(refusal),
        };
        if current.revoked_at.is_some() {
            return Ok(KeyChange::Revoked);
        }
        let created =
            insert_generated(&transaction, &current.sandbox, &current.scopes, current.name.as_deref(), now).await?;
        transaction
            .execute(
                &format!("UPDATE api_keys SET {REVOKE_SET}, replaced_by = $3 WHERE id = $1"),
                &[&id, &now, &created.info.id],
            )
            .await?;
        notify(&transaction, id).await?;
        transaction.commit().await?;
        Ok(KeyChange::Done(created))
    }
}

/// Key `id` under a row lock, or why it may not be changed by a caller holding `within`.
async fn locked<T>(
    transaction: &tokio_postgres::Transaction<'_>,
    sandbox: Option<&str>,
    id: Uuid,
    within: Option<&[Scope]>,
) -> Result<Result<ApiKeyInfo, KeyChange<T>>, StoreError> {
    let row = transaction
        .query_opt(
            &format!(
                "SELECT {INFO_COLUMNS} FROM api_keys WHERE id = $1 AND ($2::text IS NULL OR sandbox = $2) FOR UPDATE"
            ),
            &[&id, &sandbox],
        )
        .await?;
    let Some(current) = row.as_ref().map(info) else {
        return Ok(Err(KeyChange::NotFound));
    };
    if let Some(within) = within {
        let missing = Scope::missing_from(&current.scopes, within);
        if !missing.is_empty() {
            return Ok(Err(KeyChange::Exceeds(missing)));
        }
    }
    Ok(Ok(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_and_distinct() {
        let (a, b) = (generate_api_key().unwrap(), generate_api_key().unwrap());
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_ne!(a, b);
        assert_ne!(digest(&a), digest(&b));
        assert!(is_generated(&a) && is_generated(&b));
    }

    #[test]
    fn only_generated_keys_show_a_prefix() {
        let key = generate_api_key().unwrap();
        assert_eq!(shown_prefix(&key).as_deref(), Some(&key[..11]));
        for chosen in [
            "hk_local_development_only",
            &key.to_uppercase(),
            &format!("{key}0"),
            &key[..key.len() - 1],
            &key.replacen("hk_", "hx_", 1),
            "",
        ] {
            assert!(!is_generated(chosen), "{chosen}");
            assert_eq!(shown_prefix(chosen), None, "{chosen}");
        }
    }
}
