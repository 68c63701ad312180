//! Bearer-key authentication. The key decides the sandbox; nothing in a request body or path can
//! choose another.
//!
//! Key lookups are cached so the execution hot path does not pay a database round trip per
//! request. Freshness comes from LISTEN/NOTIFY, as for campaigns: every revocation, rotation and
//! bootstrap change notifies on commit and each API process drops the key at once. While the
//! listening connection is down the cache is not trusted (every request reads the database), so
//! a lost notification can never leave a revoked key working.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use chrono::{DateTime, Utc};
use herald_core::Scope;
use herald_store::api_keys::LAST_USED_RESOLUTION;
use herald_store::api_keys::listener::{KeyEvent, watch_changes};
use herald_store::{ApiKeyRecord, Store};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::AppState;
use crate::problem::Problem;

/// How long a found key is served from the cache (while listening). Invalidation does not need
/// it; it bounds how stale `last_used_at` gets, which is refreshed on a miss.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Unknown keys are cached too (briefly), so a flood of bad keys cannot hammer the database.
const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_CAPACITY: usize = 10_000;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub sandbox: String,
    pub scopes: Vec<Scope>,
    /// The key the request was made with.
    pub key_id: Uuid,
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

#[derive(Debug)]
struct Shared {
    store: Store,
    /// Recently seen keys, by SHA-256 of the key (the key itself is not kept).
    entries: RwLock<HashMap<KeyDigest, CachedLookup>>,
    /// Bumped on every invalidation, so a lookup that raced with one is not cached.
    generation: AtomicU64,
    listening: AtomicBool,
}

/// The key cache of one API process. Its listener task lives exactly as long as the cache: it is
/// aborted when the cache (with the last `AppState`) is dropped.
#[derive(Debug)]
pub(crate) struct KeyCache {
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

impl Drop for KeyCache {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

impl KeyCache {
    /// Creates the cache and starts its listener. Outside a Tokio runtime there is no listener,
    /// and so no caching: every lookup reads the database.
    pub(crate) fn start(store: Store) -> Self {
        let shared = Arc::new(Shared {
            store,
            entries: RwLock::default(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        });
        let listener = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let events = Arc::clone(&shared);
            let store = shared.store.clone();
            runtime.spawn(watch_changes(store, move |event| events.on_event(event)))
        });
        Self { shared, listener }
    }

    fn is_listening(&self) -> bool {
        self.shared.listening.load(Ordering::SeqCst)
    }

    /// Drops key `id` here at once: the process that revoked a key must not wait for its own
    /// notification to come back (others do; it takes milliseconds).
    pub(crate) fn forget(&self, id: Uuid) {
        self.shared.invalidate(Some(id));
    }

    async fn lookup(&self, key: &str, now: DateTime<Utc>) -> Result<Option<ApiKeyRecord>, Problem> {
        let shared = &self.shared;
        let digest = herald_store::api_keys::digest(key);
        if self.is_listening()
            && let Some((record, expires)) = shared.entries.read().unwrap_or_else(|p| p.into_inner()).get(&digest)
            && *expires > Instant::now()
        {
            return Ok(record.clone());
        }
        let generation = shared.generation.load(Ordering::SeqCst);
        let record = shared.store.find_api_key(key).await?;
        if let Some(record) = &record
            && record.last_used_at.is_none_or(|at| at <= now - LAST_USED_RESOLUTION)
        {
            // Best effort: a key that works must not fail a request because its statistics did not.
            if let Err(error) = shared.store.touch_api_key(record.id, now).await {
                tracing::warn!(%error, key_id = %record.id, "could not record when an api key was last used");
            }
        }
        let ttl = if record.is_some() { CACHE_TTL } else { NEGATIVE_CACHE_TTL };
        let mut entries = shared.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.is_listening() && shared.generation.load(Ordering::SeqCst) == generation {
            let instant = Instant::now();
            if entries.len() >= CACHE_CAPACITY {
                entries.retain(|_, (_, expires)| *expires > instant);
                if entries.len() >= CACHE_CAPACITY {
                    entries.clear();
                }
            }
            entries.insert(digest, (record.clone(), instant + ttl));
        }
        Ok(record)
    }
}

impl Shared {
    /// Drops key `id` (every key when `None`), and every "unknown key" answer: a bootstrap key
    /// just registered elsewhere may have been presented here a moment before.
    fn invalidate(&self, id: Option<Uuid>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        match id {
            Some(id) => entries.retain(|_, (record, _)| record.as_ref().is_some_and(|record| record.id != id)),
            None => entries.clear(),
        }
    }

    fn on_event(&self, event: KeyEvent) {
        match event {
            // Whatever changed while nobody listened is unknown: start from nothing.
            KeyEvent::Listening => {
                self.invalidate(None);
                self.listening.store(true, Ordering::SeqCst);
            }
            KeyEvent::Lost => {
                self.listening.store(false, Ordering::SeqCst);
                self.invalidate(None);
            }
            KeyEvent::Changed(id) => self.invalidate(id),
        }
    }
}

impl AppState {
    /// Whether this process hears key changes (and therefore serves keys from its cache).
    pub fn api_keys_listening(&self) -> bool {
        self.keys.is_listening()
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
        let record = state
            .keys
            .lookup(key, state.clock.now())
            .await?
            .ok_or_else(|| unauthenticated("unknown or revoked API key"))?;
        Ok(Caller { sandbox: record.sandbox, scopes: record.scopes, key_id: record.id })
    }
}
