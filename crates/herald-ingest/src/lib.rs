//! Herald's thin ingest: turns `POST /im/executions/unitary` and `/highthroughput` calls into
//! RabbitMQ messages, and answers 202 only once the broker has confirmed every one of them.
//!
//! The path of one call: recipient rates of the key and the sandbox → campaign from the cache
//! (live and inside its schedule?) → validation against the live version → idempotency claim
//! (batched) → the daily quota of the sandbox and channel → one persistent, mandatory message per
//! recipient, on the sandbox's shard, on a confirm channel → all confirms → completion (batched).

pub mod audience;
pub mod campaigns;
pub mod fanout;
pub mod ratelimit;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_broker::{Broker, OutgoingMessage, headers};
use herald_core::address::mask;
use herald_core::campaign::FieldError;
use herald_core::execution::{self, ENVELOPE_VERSION, Envelope, ExecutionRequest, RecipientType};
use herald_core::{CampaignStatus, Channel};
use herald_store::batch::Batcher;
use herald_store::{ClaimOutcome, ExecutionClaim, Store, StoreError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use crate::campaigns::CachedCampaign;
use crate::ratelimit::{LimitError, LimitExceeded, Limiter, Limits};
use herald_store::CampaignCache;

#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// How long a request holds its idempotency key while publishing before a retry may take over.
    /// Short, so that a client retrying after the API died mid-accept waits seconds, not half a
    /// minute. A take-over while the first attempt is still publishing is safe: it publishes the
    /// same message ids, and workers send each delivery once.
    pub lease: Duration,
    /// Recipient rates and daily quotas, shared by every API process.
    pub limits: Limits,
    /// Rows per batched idempotency write.
    pub max_batch: usize,
    /// Concurrent batched writers.
    pub batch_workers: usize,
    /// How long an accepted request id is remembered (at least the 24 h Herald promises).
    pub idempotency_retention: Duration,
    pub metrics: Arc<herald_telemetry::Metrics>,
    /// Audience executions: pages, leases, the 12 h window.
    pub fanout: fanout::FanoutSettings,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(5),
            limits: Limits::default(),
            max_batch: 256,
            batch_workers: 2,
            idempotency_retention: Duration::from_secs(48 * 3600),
            metrics: Arc::default(),
            fanout: fanout::FanoutSettings::default(),
        }
    }
}

/// Which execution endpoint a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionMode {
    /// `POST /im/executions/unitary`: any live campaign, `aep` and `external` recipients.
    Unitary,
    /// `POST /im/executions/highthroughput`: only a campaign marked `highThroughput`, only
    /// `external` recipients, and no profile is ever looked up or created.
    HighThroughput,
}

/// Why an execution was not accepted; the API turns each into its problem type.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("rate limited")]
    RateLimited(LimitExceeded),
    #[error("unknown campaign")]
    CampaignNotFound,
    #[error("unknown audience")]
    AudienceNotFound,
    #[error("campaign is {0}")]
    NotLive(CampaignStatus),
    #[error("campaign is {0}: outside its schedule")]
    OutsideSchedule(CampaignStatus),
    /// The high-throughput endpoint was called for a campaign not marked `highThroughput`.
    #[error("campaign is not high throughput")]
    NotHighThroughput,
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("unknown profiles")]
    ProfilesNotFound(Vec<String>),
    #[error("request id reused with another body")]
    KeyReused,
    /// Another attempt holds the request id; its lease ends after the duration.
    #[error("request still being accepted")]
    InProgress(Duration),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<LimitError> for IngestError {
    fn from(error: LimitError) -> Self {
        match error {
            LimitError::Exceeded(exceeded) => IngestError::RateLimited(exceeded),
            LimitError::Store(error) => IngestError::from(&error),
        }
    }
}

impl From<&StoreError> for IngestError {
    fn from(error: &StoreError) -> Self {
        match error {
            StoreError::Unavailable(reason) => IngestError::Unavailable(format!("database: {reason}")),
            other => IngestError::Internal(other.to_string()),
        }
    }
}

/// A 202.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub execution_id: Uuid,
    pub request_id: String,
    pub created_at: DateTime<Utc>,
    /// True when this answers a retry of an already accepted request.
    pub replayed: bool,
}

#[derive(Debug)]
pub struct Ingest {
    store: Store,
    broker: Broker,
    campaigns: Arc<CampaignCache<CachedCampaign>>,
    limiter: Limiter,
    claims: Batcher<ExecutionClaim, ClaimOutcome>,
    completions: Batcher<(Uuid, DateTime<Utc>), ()>,
    settings: IngestSettings,
    /// Wakes this process's fan-out loop when an immediate audience execution is accepted.
    fanout_wake: tokio::sync::Notify,
}

impl Ingest {
    /// The intake. It owns its batch writers and its campaign cache (they stop when it is
    /// dropped); the process-wide jobs it relies on are started by its owner: see
    /// [`purge_expired_executions`] and [`Limiter::purge_forever`].
    pub fn new(store: Store, broker: Broker, settings: IngestSettings) -> Self {
        let claim_store = store.clone();
        let claims =
            Batcher::start(settings.batch_workers, settings.max_batch, move |claims: Arc<[ExecutionClaim]>| {
                let store = claim_store.clone();
                async move { store.claim_executions(&claims).await }
            });
        let completion_store = store.clone();
        let completions =
            Batcher::start(settings.batch_workers, settings.max_batch, move |done: Arc<[(Uuid, DateTime<Utc>)]>| {
                let store = completion_store.clone();
                async move {
                    let now = done.iter().map(|(_, at)| *at).max().unwrap_or_else(Utc::now);
                    let ids: Vec<Uuid> = done.iter().map(|(id, _)| *id).collect();
                    store.complete_executions(&ids, now).await.map(|()| vec![(); done.len()])
                }
            });
        let campaigns = CampaignCache::start(store.clone(), CachedCampaign::from_record);
        let metrics = Arc::clone(&settings.metrics);
        campaigns.observe(move |hit| metrics.cache_lookup("ingest", hit));
        Self {
            campaigns,
            limiter: Limiter::new(store.clone(), settings.limits.clone()),
            store,
            broker,
            claims,
            completions,
            settings,
            fanout_wake: tokio::sync::Notify::new(),
        }
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn campaigns(&self) -> &CampaignCache<CachedCampaign> {
        &self.campaigns
    }

    /// Accepts `request` (whose raw JSON is `body`) for `sandbox`, sent with the API key `key`
    /// (its id: the key's own rate limit), at `now`, through the endpoint `mode` names.
    #[allow(clippy::too_many_arguments)]
    pub async fn execute(
        &self,
        sandbox: &str,
        key: &str,
        mode: ExecutionMode,
        body: &Value,
        request: &ExecutionRequest,
        now: DateTime<Utc>,
        traceparent: Option<&str>,
    ) -> Result<Accepted, IngestError> {
        self.limiter.admit(sandbox, key, request.recipients.len()).await?;
        let (campaign_id, campaign) = self.campaign(sandbox, &request.campaign_id).await?;
        let status = campaign.status(now);
        match status {
            CampaignStatus::Live => {}
            CampaignStatus::Scheduled | CampaignStatus::Completed => {
                return Err(IngestError::OutsideSchedule(status));
            }
            _ => return Err(IngestError::NotLive(status)),
        }
        let live = campaign.live.as_ref().ok_or(IngestError::NotLive(status))?;
        if mode == ExecutionMode::HighThroughput && !live.high_throughput {
            return Err(IngestError::NotHighThroughput);
        }
        // PostgreSQL keeps microseconds: the 202 must show the instant a replay will read back.
        // (Truncated only after the schedule check, which uses the exact instant.)
        let now = chrono::SubsecRound::trunc_subsecs(now, 6);
        let mut errors = match mode {
            ExecutionMode::Unitary => Vec::new(),
            ExecutionMode::HighThroughput => external_only(request),
        };
        let recipients = match execution::prepare(request, &live.facts) {
            Ok(recipients) if errors.is_empty() => recipients,
            Ok(_) => return Err(IngestError::Invalid(errors)),
            Err(more) => {
                errors.extend(more);
                return Err(IngestError::Invalid(errors));
            }
        };
        // High throughput has no profiles: every recipient is external (checked above) and none is
        // looked up here; the worker looks none up, nor creates one, for an external recipient.
        if mode == ExecutionMode::Unitary && !live.create_new_profiles {
            self.check_profiles_exist(sandbox, campaign.channel, &recipients).await?;
        }

        let body_hash = Sha256::digest(execution::canonical_json(body)).to_vec();
        let summary: Vec<Value> = recipients
            .iter()
            .map(|prepared| {
                let address = prepared.recipient.channel_data.as_ref().and_then(|data| data.address(campaign.channel));
                // An external recipient's user id is its address, and so is an aep identity in the
                // channel's address namespace (`Channel::identity_address`, as the worker reads it).
                let user = prepared.recipient.user_id.as_str();
                let identity = match prepared.recipient.kind {
                    RecipientType::External => Some(user),
                    RecipientType::Aep => campaign.channel.identity_address(&prepared.recipient.namespace, user),
                };
                let address = address.or(identity);
                // Any user id that is, or might be, an address is masked: in an address namespace
                // (`email`, `phone`) whatever its form, elsewhere when it looks like contact data.
                let address_namespace =
                    Channel::ALL.iter().any(|c| c.address_namespace() == Some(prepared.recipient.namespace.as_str()));
                let masked = identity.is_some() || address_namespace || looks_like_contact(user);
                let user_id = if masked { mask(user) } else { user.to_string() };
                json!({
                    "userId": user_id,
                    "type": prepared.recipient.kind,
                    "namespace": prepared.recipient.namespace,
                    "address": address.map(mask),
                })
            })
            .collect();
        let claim = ExecutionClaim {
            sandbox: sandbox.to_string(),
            campaign_id,
            request_id: request.request_id.clone(),
            body_hash,
            execution_id: Uuid::now_v7(),
            recipients: Value::Array(summary),
            now,
            lease_until: now + self.settings.lease,
        };
        let (execution_id, created_at) =
            match self.claims.submit(claim).await.map_err(|e| IngestError::from(e.as_ref()))? {
                ClaimOutcome::Claimed { execution_id, created_at }
                | ClaimOutcome::TakenOver { execution_id, created_at } => (execution_id, created_at),
                ClaimOutcome::AlreadyAccepted { execution_id, created_at } => {
                    return Ok(Accepted {
                        execution_id,
                        request_id: request.request_id.clone(),
                        created_at,
                        replayed: true,
                    });
                }
                ClaimOutcome::InProgress { retry_after } => return Err(IngestError::InProgress(retry_after)),
                ClaimOutcome::BodyMismatch => return Err(IngestError::KeyReused),
            };
        // After the claim, so that a replay answers its 202 even once the quota is used up. The
        // hold gives the recipients back on every way out below but a 202: a failed request
        // costs no quota.
        let quota = match self.limiter.take_quota(sandbox, campaign.channel, now, recipients.len()).await {
            Ok(hold) => hold,
            Err(refused) => {
                if let Err(release) = self.store.release_execution(execution_id, now).await {
                    tracing::warn!(error = %release, %execution_id, "could not release the execution; a retry waits for its lease");
                }
                return Err(refused.into());
            }
        };

        let expires_at = live.message_ttl_seconds.map(|ttl| created_at + chrono::Duration::seconds(i64::from(ttl)));
        let exchange = self.broker.topology().work_exchange();
        let publish = tracing::info_span!(
            "publish",
            otel.name = %format!("publish {exchange}"),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.destination.name = %exchange,
            messaging.batch.message_count = recipients.len(),
            herald.execution_id = %execution_id,
            herald.campaign_id = %campaign_id,
        );
        // The publish span's context travels with each message, so the worker's spans join the
        // request's trace; without tracing, the caller's traceparent (or a new one) does.
        let traceparent = herald_telemetry::trace::traceparent_of(&publish)
            .or_else(|| traceparent.map(str::to_string))
            .unwrap_or_else(herald_telemetry::trace::new_traceparent);
        // Every message of a sandbox goes to its shard queue (see topology.rs: fairness).
        let routing_key = self.broker.topology().routing_key_for(campaign.channel, sandbox);
        let mut messages = Vec::with_capacity(recipients.len());
        for (index, prepared) in recipients.into_iter().enumerate() {
            let envelope = Envelope {
                version: ENVELOPE_VERSION,
                execution_id,
                request_id: request.request_id.clone(),
                campaign_id,
                sandbox: sandbox.to_string(),
                channel: campaign.channel,
                recipient_index: u32::try_from(index).unwrap_or(u32::MAX),
                recipient: prepared.recipient,
                context: prepared.context,
                profile: prepared.profile,
                accepted_at: created_at,
                expires_at,
            };
            messages.push(outgoing(&envelope, routing_key.clone(), &traceparent)?);
        }
        let publishing = std::time::Instant::now();
        let published = self.broker.publish_all(&messages).instrument(publish).await;
        self.settings.metrics.publish_confirm.observe(publishing.elapsed().as_secs_f64());
        if let Err(error) = published {
            tracing::warn!(%error, %execution_id, "publishing failed; the execution is released for a retry");
            if let Err(release) = self.store.release_execution(execution_id, now).await {
                tracing::warn!(error = %release, %execution_id, "could not release the execution; a retry waits for its lease");
            }
            return Err(IngestError::Unavailable(format!("broker: {error}")));
        }
        // Every message is in the broker now: the 202 stands even if recording that fails (a
        // retry would republish the same message ids, which workers deduplicate).
        quota.commit();
        if let Err(error) = self.completions.submit((execution_id, now)).await {
            tracing::warn!(%error, %execution_id, "could not mark the execution accepted");
        }
        Ok(Accepted { execution_id, request_id: request.request_id.clone(), created_at, replayed: false })
    }

    /// The campaign a request names, from the cache; an id that is not a UUID names none.
    pub(crate) async fn campaign(
        &self,
        sandbox: &str,
        campaign_id: &str,
    ) -> Result<(Uuid, Arc<CachedCampaign>), IngestError> {
        let campaign_id = Uuid::parse_str(campaign_id).map_err(|_| IngestError::CampaignNotFound)?;
        let campaign = self
            .campaigns
            .get(sandbox, campaign_id)
            .await
            .map_err(|e| IngestError::from(&e))?
            .ok_or(IngestError::CampaignNotFound)?;
        Ok((campaign_id, campaign))
    }

    async fn check_profiles_exist(
        &self,
        sandbox: &str,
        channel: Channel,
        recipients: &[execution::PreparedRecipient],
    ) -> Result<(), IngestError> {
        // An address in the channel's own address namespace is sendable without a profile.
        let identities: Vec<(String, String)> = recipients
            .iter()
            .filter(|p| p.recipient.kind == RecipientType::Aep)
            .filter(|p| channel.identity_address(&p.recipient.namespace, &p.recipient.user_id).is_none())
            .map(|p| (p.recipient.namespace.clone(), p.recipient.user_id.clone()))
            .collect();
        if identities.is_empty() {
            return Ok(());
        }
        let found = self.store.existing_profiles(sandbox, &identities).await.map_err(|e| IngestError::from(&e))?;
        let missing: Vec<String> =
            identities.into_iter().filter(|identity| !found.contains(identity)).map(|(_, user)| user).collect();
        if missing.is_empty() { Ok(()) } else { Err(IngestError::ProfilesNotFound(missing)) }
    }
}

/// The high-throughput endpoint's rule: every recipient is `external` (its user id, or its
/// `channelData`, is the address), since a high-throughput execution never reads a profile.
fn external_only(request: &ExecutionRequest) -> Vec<FieldError> {
    request
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, recipient)| recipient.kind != RecipientType::External)
        .map(|(index, _)| FieldError {
            pointer: format!("/recipients/{index}/type"),
            detail: "the high-throughput endpoint takes external recipients only (`\"type\": \"external\"`, \
                     the address as `userId`)"
                .into(),
        })
        .collect()
}

/// Whether `id` may be an email address or a phone number in any spelling (`Lee <lee@x>`, `x@y`,
/// a full-width at sign, `+33 6 12 34 56 78`, `0612345678`, `tel:…`): an at sign, or six digits
/// or more. Wider than the validators on purpose: it decides what is masked, not what is sent.
fn looks_like_contact(id: &str) -> bool {
    id.contains(['@', '\u{FF20}']) || id.contains("%40") || id.chars().filter(char::is_ascii_digit).count() >= 6
}

/// How often old executions are purged; a few minutes' lag only keeps a key a little longer.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Forgets accepted executions older than `retention`, every [`PURGE_INTERVAL`]. One per API
/// process, started by its owner.
pub async fn purge_expired_executions(store: Store, retention: Duration) {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tick.tick().await;
        // Bounded by its setting; a window reaching before the calendar purges nothing.
        let Some(before) = chrono::Duration::from_std(retention).ok().and_then(|d| Utc::now().checked_sub_signed(d))
        else {
            continue;
        };
        match store.purge_executions(before).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged executions past the idempotency window"),
            Err(error) => tracing::warn!(%error, "could not purge old executions"),
        }
    }
}

pub(crate) fn outgoing(
    envelope: &Envelope,
    routing_key: String,
    traceparent: &str,
) -> Result<OutgoingMessage, IngestError> {
    let payload = serde_json::to_vec(envelope).map_err(|error| IngestError::Internal(error.to_string()))?;
    Ok(OutgoingMessage {
        routing_key,
        message_id: envelope.message_id(),
        payload,
        headers: headers::for_envelope(envelope, traceparent),
        timestamp_secs: u64::try_from(envelope.accepted_at.timestamp()).unwrap_or(0),
    })
}

#[cfg(test)]
mod contact_tests {
    use super::looks_like_contact;

    #[test]
    fn contact_data_in_any_spelling_is_recognised_and_plain_ids_are_not() {
        for id in [
            "quentin.tarantino@localhost",
            "Lee Sun <lee.sun@example.com>",
            "x@y",
            "pierre\u{FF20}example.com",
            "zed.q%40example.com",
            "33612349876",
            "0612340001",
            "+33 6 12 34 00 02",
            "tel:+33612340003",
            "+1-202-555-0199",
        ] {
            assert!(looks_like_contact(id), "{id}");
        }
        for id in ["jane", "user-42", "crm:12345", "a1b2c3"] {
            assert!(!looks_like_contact(id), "{id}");
        }
    }
}
