//! Bearer-key authentication. The key decides the sandbox; nothing in a request body or path can
//! choose another. Key lookups are cached briefly so the execution hot path does not pay a
//! database round trip per request.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use herald_core::Scope;
use herald_store::{ApiKeyRecord, Store};

use crate::AppState;
use crate::problem::Problem;

/// How long a looked-up key is trusted without asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Unknown keys are cached too (briefly), so a flood of bad keys cannot hammer the database.
const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_CAPACITY: usize = 10_000;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub sandbox: String,
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// Fails with 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(Problem::new(StatusCode::FORBIDDEN, "forbidden", "The API key lacks a required scope")
                .detail(format!("this operation needs the `{scope}` scope"))
                .with("requiredScope", scope.as_str()))
        }
    }
}

type KeyDigest = Vec<u8>;
/// The lookup's answer (`None`: unknown key) and when it stops being trusted.
type CachedLookup = (Option<ApiKeyRecord>, Instant);

/// Recently seen keys, by SHA-256 of the key (the key itself is not kept).
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    entries: RwLock<HashMap<KeyDigest, CachedLookup>>,
}

impl KeyCache {
    async fn lookup(&self, store: &Store, key: &str) -> Result<Option<ApiKeyRecord>, Problem> {
        let digest = herald_store::api_keys::digest(key);
        let now = Instant::now();
        if let Some((record, expires)) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(&digest)
            && *expires > now
        {
            return Ok(record.clone());
        }
        let record = store.find_api_key(key).await?;
        let ttl = if record.is_some() { CACHE_TTL } else { NEGATIVE_CACHE_TTL };
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(digest, (record.clone(), now + ttl));
        Ok(record)
    }
}

fn unauthenticated(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Missing or invalid API key").detail(detail)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("send `Authorization: Bearer <API key>`"))?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <API key>`"))?;
        let record =
            state.keys.lookup(&state.store, key).await?.ok_or_else(|| unauthenticated("unknown or revoked API key"))?;
        Ok(Caller { sandbox: record.sandbox, scopes: record.scopes })
    }
}
