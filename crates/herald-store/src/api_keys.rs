//! API keys: shown once at creation, stored only as a SHA-256 hash. Keys are 256 random bits, so
//! a fast hash is enough: there is nothing to brute-force that a slow hash would protect.

use chrono::{DateTime, Utc};
use herald_core::Scope;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Store, StoreError};

const KEY_PREFIX: &str = "hk_";

/// A key as the database knows it: whose it is and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub sandbox: String,
    pub scopes: Vec<Scope>,
}

/// A fresh key: `hk_` and 64 hex digits.
pub fn generate_api_key() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| StoreError::Config(format!("no randomness: {error}")))?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{KEY_PREFIX}{hex}"))
}

/// The SHA-256 of a key, as stored; also usable as a cache key.
pub fn digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn scope_names(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|scope| scope.as_str().to_string()).collect()
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
        let key = generate_api_key()?;
        self.insert_api_key(sandbox, &key, scopes, name, now).await?;
        Ok(key)
    }

    /// Registers a key chosen by configuration (the local-stack bootstrap key) unless it exists.
    pub async fn ensure_api_key(
        &self,
        sandbox: &str,
        key: &str,
        scopes: &[Scope],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match self.insert_api_key(sandbox, key, scopes, Some("bootstrap"), now).await {
            Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn insert_api_key(
        &self,
        sandbox: &str,
        key: &str,
        scopes: &[Scope],
        name: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO api_keys (id, sandbox, name, key_hash, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&Uuid::now_v7(), &sandbox, &name, &digest(key), &scope_names(scopes), &now],
            )
            .await?;
        Ok(())
    }

    /// Looks a presented key up; `None` for unknown or revoked keys.
    pub async fn find_api_key(&self, key: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, sandbox, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
                &[&digest(key)],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let names: Vec<String> = row.get(2);
        // A scope this binary does not know (written by a newer version) grants nothing here.
        let scopes = names.iter().filter_map(|name| name.parse().ok()).collect();
        Ok(Some(ApiKeyRecord { id: row.get(0), sandbox: row.get(1), scopes }))
    }
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
    }
}
