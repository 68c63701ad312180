//! The in-process campaign cache that lets ingest check "is it live?" without a database round
//! trip per request.
//!
//! Freshness comes from PostgreSQL LISTEN/NOTIFY: every campaign change notifies on commit
//! (`herald_store::CAMPAIGN_CHANGES_CHANNEL`) and each API process drops its copy on receipt, so
//! a stop made through any instance is seen by all within the notification latency. While the
//! listening connection is down the cache is bypassed (every request reads the database), so a
//! lost notification can never leave a stopped campaign accepted.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use herald_core::execution::CampaignFacts;
use herald_core::template::CompiledContent;
use herald_core::{CampaignStatus, Channel, Schedule, StoredState};
use herald_store::{CAMPAIGN_CHANGES_CHANNEL, CampaignRecord, Store, StoreError};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

/// What ingest needs of a campaign's live version.
#[derive(Debug, Clone)]
pub struct LiveVersion {
    pub id: Uuid,
    pub schedule: Schedule,
    pub facts: CampaignFacts,
    pub message_ttl_seconds: Option<u32>,
    pub create_new_profiles: bool,
}

#[derive(Debug, Clone)]
pub struct CachedCampaign {
    pub id: Uuid,
    pub sandbox: String,
    pub channel: Channel,
    pub state: StoredState,
    pub live: Option<LiveVersion>,
}

impl CachedCampaign {
    pub fn status(&self, now: DateTime<Utc>) -> CampaignStatus {
        CampaignStatus::at(
            self.state,
            self.live.as_ref().map(|live| &live.schedule),
            now,
        )
    }

    fn from_record(record: &CampaignRecord) -> Self {
        let live = record.live.as_ref().map(|version| {
            let definition = &version.definition;
            LiveVersion {
                id: version.id,
                schedule: definition.schedule.clone(),
                facts: CampaignFacts {
                    channel: record.channel,
                    identity_namespace: definition.identity_namespace.clone(),
                    required_context: required_context(&definition.content),
                },
                message_ttl_seconds: definition.message_ttl_seconds,
                create_new_profiles: definition.create_new_profiles,
            }
        });
        Self {
            id: record.id,
            sandbox: record.sandbox.clone(),
            channel: record.channel,
            state: record.state,
            live,
        }
    }
}

/// The `context` attributes the content reads without a guard: each must be in every execution.
pub fn required_context(content: &herald_core::Content) -> BTreeSet<String> {
    // A live version passed review, so it compiles; if it somehow does not, nothing is required
    // here and the worker reports the rendering error.
    let Ok(compiled) = CompiledContent::compile(content) else {
        return BTreeSet::new();
    };
    compiled
        .analyse()
        .into_iter()
        .flat_map(|(_, analysis)| analysis.variables)
        .filter(|variable| variable.root() == "context" && !variable.guarded)
        .filter_map(|variable| variable.first_key().map(str::to_string))
        .collect()
}

#[derive(Debug)]
pub struct CampaignCache {
    store: Store,
    entries: RwLock<HashMap<Uuid, Arc<CachedCampaign>>>,
    /// Bumped on every invalidation, so a load that raced with one is not cached.
    generation: AtomicU64,
    listening: AtomicBool,
}

impl CampaignCache {
    /// Creates the cache and starts its listener.
    pub fn start(store: Store) -> Arc<Self> {
        let cache = Arc::new(Self {
            store,
            entries: RwLock::default(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&cache).listen_forever());
        cache
    }

    /// Whether invalidations are being received (and the cache therefore used).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// The campaign `id` of `sandbox`, from the cache when it can be trusted.
    pub async fn get(
        &self,
        sandbox: &str,
        id: Uuid,
    ) -> Result<Option<Arc<CachedCampaign>>, StoreError> {
        if self.is_listening()
            && let Some(entry) = self
                .entries
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
        {
            return Ok((entry.sandbox == sandbox).then(|| Arc::clone(entry)));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let Some(record) = self.store.get_campaign(sandbox, id).await? else {
            return Ok(None);
        };
        let campaign = Arc::new(CachedCampaign::from_record(&record));
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.is_listening() && self.generation.load(Ordering::SeqCst) == generation {
            entries.insert(id, Arc::clone(&campaign));
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
        let mut delay = Duration::from_millis(100);
        loop {
            if let Err(error) = self.listen_once().await {
                tracing::warn!(%error, "campaign change listener lost; the cache is bypassed until it is back");
            }
            self.listening.store(false, Ordering::SeqCst);
            self.invalidate(None);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    async fn listen_once(&self) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = self
            .store
            .connection_config()
            .connect(tokio_postgres::NoTls)
            .await?;
        let (notifications, mut received) = mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let driver = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(notification)) => {
                        if notifications
                            .send(notification.payload().to_string())
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "campaign change listener connection failed");
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CAMPAIGN_CHANGES_CHANNEL}"))
            .await?;
        self.invalidate(None);
        self.listening.store(true, Ordering::SeqCst);
        tracing::info!("listening for campaign changes");
        while let Some(payload) = received.recv().await {
            self.invalidate(Uuid::parse_str(&payload).ok());
        }
        driver.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unguarded_context_reads_are_required() {
        let content = herald_core::Content {
            text: Some("{{ context.url }} {{ context.name | default(value='x') }} {% if context.vip %}!{% endif %} {{ context.otp.code }}".into()),
            ..Default::default()
        };
        let required: Vec<String> = required_context(&content).into_iter().collect();
        assert_eq!(required, ["otp", "url"]);
    }
}
