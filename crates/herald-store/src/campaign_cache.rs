//! An in-process campaign cache, so hot paths (ingest's "is it live?", the worker's re-check)
//! do not pay a database round trip per request or message.
//!
//! Freshness comes from PostgreSQL LISTEN/NOTIFY: every campaign change notifies on commit
//! ([`CAMPAIGN_CHANGES_CHANNEL`]) and each process drops its copy on receipt, so a stop made
//! through any instance is seen by all within the notification latency. While the listening
//! connection is down the cache is bypassed (every lookup reads the database), so a lost
//! notification can never leave a stopped campaign in use.
//!
//! What is cached is up to the user: a function builds it from the campaign record once per
//! change (ingest keeps validation facts, the worker compiled templates).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use uuid::Uuid;

use crate::listen::{AbortOnDrop, Heard};

use crate::{CAMPAIGN_CHANGES_CHANNEL, CampaignRecord, Store, StoreError};

type Build<T> = dyn Fn(&CampaignRecord) -> T + Send + Sync;

/// The cache. It owns its listener: the listening task stops when the cache is dropped.
pub struct CampaignCache<T> {
    shared: Arc<Shared<T>>,
    _listener: AbortOnDrop,
}

impl<T> std::ops::Deref for CampaignCache<T> {
    type Target = Shared<T>;
    fn deref(&self) -> &Shared<T> {
        &self.shared
    }
}

/// What the cache and its listener share.
pub struct Shared<T> {
    store: Store,
    build: Box<Build<T>>,
    /// campaign id → (sandbox, cached value).
    entries: RwLock<HashMap<Uuid, (String, Arc<T>)>>,
    /// Bumped on every invalidation, so a load that raced with one is not cached.
    generation: AtomicU64,
    listening: AtomicBool,
    /// Told of every lookup: `true` for a hit (metrics).
    observer: std::sync::OnceLock<Box<dyn Fn(bool) + Send + Sync>>,
}

impl<T> fmt::Debug for CampaignCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CampaignCache").field("listening", &self.is_listening()).finish()
    }
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("listening", &self.is_listening()).finish()
    }
}

impl<T> Shared<T> {
    /// Whether invalidations are being received (and the cache therefore used).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }
}

impl<T: Send + Sync + 'static> CampaignCache<T> {
    /// Creates the cache, caching `build(record)` per campaign, and starts its listener, which
    /// lives as long as the cache.
    pub fn start(store: Store, build: impl Fn(&CampaignRecord) -> T + Send + Sync + 'static) -> Arc<Self> {
        let shared = Arc::new(Shared {
            store,
            build: Box::new(build),
            entries: RwLock::default(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
        });
        let listener = AbortOnDrop(tokio::spawn(Arc::clone(&shared).listen_forever()));
        Arc::new(Self { shared, _listener: listener })
    }
}

impl<T: Send + Sync + 'static> Shared<T> {
    /// Calls `observer` on every lookup with whether it was a hit. Only the first one counts.
    pub fn observe(&self, observer: impl Fn(bool) + Send + Sync + 'static) {
        let _ = self.observer.set(Box::new(observer));
    }

    /// The campaign `id` of `sandbox`, from the cache when it can be trusted.
    pub async fn get(&self, sandbox: &str, id: Uuid) -> Result<Option<Arc<T>>, StoreError> {
        let observe = |hit| {
            if let Some(observer) = self.observer.get() {
                observer(hit);
            }
        };
        if self.is_listening()
            && let Some((owner, entry)) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(&id)
        {
            observe(true);
            return Ok((owner == sandbox).then(|| Arc::clone(entry)));
        }
        observe(false);
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(record) = self.store.get_campaign(sandbox, id).await? else {
            return Ok(None);
        };
        let campaign = Arc::new((self.build)(&record));
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.is_listening() && self.generation.load(Ordering::SeqCst) == generation {
            entries.insert(id, (record.sandbox.clone(), Arc::clone(&campaign)));
        }
        Ok(Some(campaign))
    }

    fn invalidate(&self, id: Option<Uuid>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        match id {
            Some(id) => {
                entries.remove(&id);
            }
            None => entries.clear(),
        }
    }

    async fn listen_forever(self: Arc<Self>) {
        crate::listen::listen_forever(self.store.clone(), CAMPAIGN_CHANGES_CHANNEL, "campaigns", |heard| match heard {
            Heard::Listening => {
                // Whatever changed while nobody listened is forgotten before the cache is trusted.
                self.invalidate(None);
                self.listening.store(true, Ordering::SeqCst);
            }
            Heard::Lost => {
                self.listening.store(false, Ordering::SeqCst);
                self.invalidate(None);
            }
            Heard::Notification(payload) => self.invalidate(Uuid::parse_str(payload).ok()),
        })
        .await;
    }
}
