//! The life of one delivery: decode → re-check the campaign → expiry → resolve the recipient →
//! render → claim → send (with quick in-process retries) → record. It returns a [`Decision`];
//! it never touches the broker, so acks and republishes stay in the delivery loop.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::delivery::{AfterFailure, Attempt, DeliveryStatus, ErrorClass, ProviderError, RetryPolicy, reasons};
use herald_core::execution::{ENVELOPE_VERSION, Envelope, RecipientType};
use herald_core::feedback::{self, SuppressionReason};
use herald_core::template::{CompiledContent, Rendered};
use herald_core::{CampaignStatus, Channel, Clock};
use herald_store::batch::Batcher;
use herald_store::{
    CallStart, CampaignCache, CampaignRecord, ClaimRequest, DeliveryClaim, DeliveryKey, Finish, Store, StoreError,
    SuppressionCheck,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::observe;
use crate::providers::transmit::{self, TransmitGate};
use crate::providers::{EmailMessage, Provider, ProviderResult, PushMessage, Receipt, SmsMessage};
use crate::resolve::{Resolved, resolve};

pub use herald_core::delivery::Decision;

/// A campaign as the worker caches it: the record and the live version's compiled content.
#[derive(Debug)]
pub struct WorkerCampaign {
    pub record: CampaignRecord,
    pub compiled: Option<Arc<CompiledContent>>,
    /// Why the live content does not compile, when it does not (content that bypassed the
    /// review, or reviewed before a rule it breaks): each delivery fails with this reason.
    pub compile_error: Option<String>,
}

impl WorkerCampaign {
    /// Compiles the live content. Compiling is bounded (see `herald_core::template`), so it may
    /// run where the cache loads, on the runtime.
    pub fn from_record(record: &CampaignRecord) -> Self {
        let compiled = record.live.as_ref().map(|live| CompiledContent::compile(&live.definition.content));
        let (compiled, compile_error) = match compiled {
            Some(Ok(compiled)) => (Some(Arc::new(compiled)), None),
            Some(Err(errors)) => {
                let why = errors.iter().map(|e| format!("{}: {}", e.part, e.message)).collect::<Vec<_>>().join("; ");
                // The parts and error codes only: tera's messages quote the template.
                let codes: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.part, e.code)).collect();
                tracing::warn!(campaign_id = %record.id, errors = ?codes, "the live content does not compile; its deliveries fail rendering");
                (None, Some(why))
            }
            None => (None, None),
        };
        Self { record: record.clone(), compiled, compile_error }
    }
}

/// One claimed delivery on its way to the provider.
struct Job<'a> {
    envelope: &'a Envelope,
    campaign: &'a CampaignRecord,
    /// The live version `deliver` checked: what is sent.
    live: &'a herald_store::VersionRecord,
    resolved: &'a Resolved,
    rendered: &'a Rendered,
    key: &'a DeliveryKey,
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub policy: RetryPolicy,
    /// A `sending` claim older than this belongs to a dead worker.
    pub stale_claim: chrono::Duration,
    /// Pause after a database failure.
    pub database_pause: Duration,
    /// Rows per batched claim, call-mark or outcome write (`HERALD_WORKER_BATCH_SIZE`): two
    /// single-row commits per message would cap a worker at a few thousand messages a second.
    pub max_batch: usize,
    /// Concurrent writers of each batch kind (`HERALD_WORKER_BATCH_WRITERS`).
    pub batch_writers: usize,
    /// Provider send rates per channel (e.g. the SES account's maximum send rate), shared by
    /// every worker. A channel without an entry is not limited here.
    pub channel_rates: Vec<(Channel, f64)>,
    /// The SES configuration set of emails whose campaign names none
    /// (`HERALD_SES_CONFIGURATION_SET`): where SES publishes their feedback events.
    pub ses_configuration_set: Option<String>,
    pub metrics: Arc<herald_telemetry::Metrics>,
}

#[derive(Debug)]
pub struct Pipeline {
    store: Store,
    provider: Arc<dyn Provider>,
    campaigns: Arc<CampaignCache<WorkerCampaign>>,
    clock: Arc<dyn Clock>,
    settings: PipelineSettings,
    /// Claims and outcomes are written in micro-batches: two single-row commits per message
    /// would cap a worker at a few thousand messages a second.
    claims: Batcher<ClaimRequest, DeliveryClaim>,
    starts: Arc<Batcher<CallStart, bool>>,
    finishes: Batcher<Finish, bool>,
    /// Messages this process handed to a provider successfully (logged at shutdown).
    sent: std::sync::atomic::AtomicU64,
    /// Renders at once, and each sandbox's share of them.
    render_turns: herald_core::template::RenderTurns,
}

/// How long the call mark is retried before the message is put back (a longer database outage).
const MARK_PATIENCE: Duration = Duration::from_secs(10);

fn unbatched(error: Arc<StoreError>) -> StoreError {
    match error.as_ref() {
        StoreError::Unavailable(reason) => StoreError::Unavailable(reason.clone()),
        other => StoreError::Corrupt(format!("batched write: {other}")),
    }
}

fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}

impl Pipeline {
    pub fn new(store: Store, provider: Arc<dyn Provider>, clock: Arc<dyn Clock>, settings: PipelineSettings) -> Self {
        let campaigns = CampaignCache::start(store.clone(), WorkerCampaign::from_record);
        let metrics = Arc::clone(&settings.metrics);
        campaigns.observe(move |hit| metrics.cache_lookup("worker", hit));
        let (claim_store, stale) = (store.clone(), settings.stale_claim);
        let (writers, max_batch) = (settings.batch_writers, settings.max_batch);
        let claims = Batcher::start(writers, max_batch, move |requests: Arc<[ClaimRequest]>| {
            let store = claim_store.clone();
            async move { store.claim_deliveries(&requests, stale).await }
        });
        let start_store = store.clone();
        let starts = Arc::new(Batcher::start(writers, max_batch, move |starts: Arc<[CallStart]>| {
            let store = start_store.clone();
            async move { store.mark_calls_started(&starts).await }
        }));
        let finish_store = store.clone();
        let finishes = Batcher::start(writers, max_batch, move |finishes: Arc<[Finish]>| {
            let store = finish_store.clone();
            async move { store.finish_deliveries(&finishes).await }
        });
        let render_turns = herald_core::template::RenderTurns::new(crate::render::render_limit());
        Self {
            store,
            provider,
            campaigns,
            clock,
            settings,
            claims,
            starts,
            finishes,
            sent: Default::default(),
            render_turns,
        }
    }

    pub(crate) fn render_turns(&self) -> &herald_core::template::RenderTurns {
        &self.render_turns
    }

    pub fn campaigns(&self) -> &CampaignCache<WorkerCampaign> {
        &self.campaigns
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn now(&self) -> chrono::DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn metrics(&self) -> &herald_telemetry::Metrics {
        &self.settings.metrics
    }

    /// Messages this process sent successfully so far.
    pub fn sent_count(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn first_tier(&self) -> Duration {
        self.settings.policy.tiers.first().copied().unwrap_or(Duration::from_secs(5))
    }

    fn database_down(&self, error: &StoreError) -> Decision {
        match error {
            StoreError::Unavailable(_) => tracing::warn!(%error, "database unavailable; pausing"),
            other => tracing::error!(error = ?other, "database error; pausing"),
        }
        Decision::Pause { pause: Some(self.settings.database_pause), reason: "database-unavailable".into() }
    }

    /// Processes one message body that has been through `tiers_used` retry tiers.
    pub async fn process(&self, body: &[u8], tiers_used: u32) -> Decision {
        self.process_delivery(body, tiers_used, false).await
    }

    /// As [`Pipeline::process`], for a message the broker marked `redelivered` (it was held by a
    /// consumer that went away, maybe by dying while rendering it).
    pub async fn process_delivery(&self, body: &[u8], tiers_used: u32, redelivered: bool) -> Decision {
        let envelope: Envelope = match serde_json::from_slice(body) {
            Ok(envelope) if envelope_version_ok(&envelope) => envelope,
            Ok(_) => {
                return Decision::DeadLetter {
                    reason: reasons::INVALID_MESSAGE.into(),
                    last_error: "unknown envelope version".into(),
                };
            }
            Err(error) => {
                return Decision::DeadLetter {
                    reason: reasons::INVALID_MESSAGE.into(),
                    last_error: format!("undecodable envelope: {error}"),
                };
            }
        };
        match self.deliver(envelope, tiers_used, redelivered).await {
            Ok(decision) => decision,
            Err(error) => self.database_down(&error),
        }
    }

    async fn deliver(
        &self,
        mut envelope: Envelope,
        tiers_used: u32,
        redelivered: bool,
    ) -> Result<Decision, StoreError> {
        let now = self.clock.now();
        let key = DeliveryKey {
            execution_id: envelope.execution_id,
            recipient_index: i32::try_from(envelope.recipient_index).unwrap_or(i32::MAX),
            campaign_id: envelope.campaign_id,
            channel: envelope.channel,
        };
        let span = tracing::Span::current();
        span.record("herald.execution_id", tracing::field::display(envelope.execution_id));
        span.record("herald.campaign_id", tracing::field::display(envelope.campaign_id));
        let campaign = self.campaigns.get(&envelope.sandbox, envelope.campaign_id).await?;
        let live = campaign
            .as_ref()
            .filter(|c| c.record.status(now) == CampaignStatus::Live)
            .and_then(|c| c.record.live.as_ref().map(|live| (c, live)));
        let Some((campaign, live)) = live else {
            return self.exclude(&key, None, reasons::CAMPAIGN_NOT_LIVE, now).await;
        };
        let version = Some(live.id);
        if envelope.expires_at.is_some_and(|expires| now >= expires) {
            return self.exclude(&key, version, reasons::EXPIRED, now).await;
        }
        let stored = match envelope.recipient.kind {
            RecipientType::External => None,
            RecipientType::Aep => {
                let (namespace, user) = (&envelope.recipient.namespace, &envelope.recipient.user_id);
                let profile = self.store.get_profile(&envelope.sandbox, namespace, user).await?;
                if profile.is_none() && live.definition.create_new_profiles {
                    self.store.ensure_identity_profile(&envelope.sandbox, namespace, user, now).await?;
                }
                profile
            }
        };
        let mut resolved = match resolve(&envelope, &live.definition, stored.as_ref()) {
            Ok(resolved) => resolved,
            Err(reason) => return self.exclude(&key, version, reason, now).await,
        };
        // Profile and context are not needed after rendering: they move into the template scope.
        let profile = serde_json::Value::Object(std::mem::take(&mut resolved.profile));
        let context = serde_json::Value::Object(std::mem::take(&mut envelope.context));
        // Off the runtime, within the render budgets (see `render.rs`).
        let rendered = match self
            .render_step(&envelope.sandbox, &key, version, campaign, (profile, context), redelivered)
            .await?
        {
            Ok(rendered) => rendered,
            Err(decision) => return Ok(decision),
        };
        let resend_abandoned = live.definition.resend_maybe_sent;
        let request = ClaimRequest {
            key: key.clone(),
            version_id: version,
            token: Uuid::now_v7(),
            // Read now, not when the message arrived: a render turn may take seconds under load,
            // and a claim born older than the takeover limit could be taken over at once.
            now: self.clock.now(),
            accepted_at: envelope.accepted_at,
            resend_abandoned,
            // Consulted by the claim statement itself: no extra round trip.
            suppression: herald_core::feedback::suppression_address(envelope.channel, &resolved.address).map(
                |address| SuppressionCheck {
                    sandbox: envelope.sandbox.clone(),
                    address,
                    allow_complained: live.definition.send_to_complained_addresses,
                },
            ),
        };
        let (token, attempts) = match self.claims.submit(request).await.map_err(unbatched)? {
            DeliveryClaim::Claimed { token, attempts } => (token, attempts),
            DeliveryClaim::Final(_) => return Ok(Decision::Ack),
            DeliveryClaim::Suppressed => {
                tracing::debug!(execution_id = %key.execution_id, "the address is suppressed; excluded without a call");
                observe::outcome(self.metrics(), key.channel, DeliveryStatus::Excluded, Some(reasons::SUPPRESSED));
                return Ok(Decision::Ack);
            }
            DeliveryClaim::Abandoned => {
                // This copy found a dead worker's claim with its call started: maybe sent.
                tracing::warn!(execution_id = %key.execution_id, "a worker died during the provider call; recorded unknown, not resent");
                observe::outcome(self.metrics(), key.channel, DeliveryStatus::Unknown, Some(reasons::MAYBE_SENT));
                return Ok(Decision::Ack);
            }
            DeliveryClaim::Busy => {
                return Ok(Decision::Retry { tier: self.first_tier(), tiers_used });
            }
        };
        let job = Job {
            envelope: &envelope,
            campaign: &campaign.record,
            live,
            resolved: &resolved,
            rendered: &rendered,
            key: &key,
        };
        let resend_maybe_sent = live.definition.resend_maybe_sent;
        self.send_and_record(&job, token, attempts, tiers_used, resend_maybe_sent).await
    }

    /// Writes an outcome known after a provider call, retrying until the database takes it: a
    /// send that succeeded must never be re-queued because the database blinked. The message
    /// stays unacknowledged meanwhile, and the claim cannot be lost to staleness (a claim
    /// declared abandoned meanwhile still takes its holder's outcome).
    async fn finish(&self, finish: Finish) {
        let outcome = observe::outcome_labels(finish.key.channel, finish.status, finish.reason.as_deref());
        let mut delay = Duration::from_millis(50);
        let mut failures = 0u32;
        let written = loop {
            match self.finishes.submit(finish.clone()).await {
                Ok(written) => break written,
                Err(error) => {
                    failures += 1;
                    // Every failure is logged at first, then one in ten: an outage lasts.
                    if failures <= 3 || failures.is_multiple_of(10) {
                        tracing::warn!(%error, execution_id = %finish.key.execution_id, status = finish.status.as_str(),
                            failures, "could not record a delivery outcome; holding it and trying again");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        if failures > 0 {
            tracing::info!(execution_id = %finish.key.execution_id, failures, "delivery outcome recorded after the database came back");
        }
        self.metrics().outcomes.get_or_create(&outcome).inc();
        if !written {
            // Another worker took the claim over meanwhile (a campaign that resends maybe-sent).
            tracing::warn!(execution_id = %finish.key.execution_id, "a delivery outcome arrived after its claim was taken over");
        }
    }

    async fn exclude(
        &self,
        key: &DeliveryKey,
        version: Option<Uuid>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Decision, StoreError> {
        tracing::debug!(execution_id = %key.execution_id, reason, "delivery excluded");
        self.store.record_delivery(key, version, DeliveryStatus::Excluded, (reason, None), now).await?;
        observe::outcome(self.metrics(), key.channel, DeliveryStatus::Excluded, Some(reason));
        Ok(Decision::Ack)
    }

    /// The gate that writes a claim's call mark, once, when its first request is about to leave.
    fn transmit_gate(&self, key: &DeliveryKey, token: Uuid) -> TransmitGate {
        let (starts, clock, key) = (Arc::clone(&self.starts), Arc::clone(&self.clock), key.clone());
        TransmitGate::new(Arc::new(move || {
            let start = CallStart { key: key.clone(), token, now: clock.now() };
            let starts = Arc::clone(&starts);
            Box::pin(async move {
                // The mark is idempotent on its token: a write whose answer was lost (it may have
                // committed) is written again rather than given up, or the message would be put
                // back with a mark and later recorded maybe-sent although it never left.
                let mut delay = Duration::from_millis(50);
                let give_up = tokio::time::Instant::now() + MARK_PATIENCE;
                loop {
                    match starts.submit(start.clone()).await {
                        Ok(held) => return Ok(held),
                        Err(error) if tokio::time::Instant::now() >= give_up => return Err(error.to_string()),
                        Err(_) => {
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            })
        }))
    }

    /// Calls the provider for a claimed delivery (with quick in-process retries) and records the
    /// outcome. The call mark is written just before the first request leaves (by the provider's
    /// connector, or here for providers that cannot): from then on a worker that dies leaves the
    /// delivery `unknown` rather than resendable.
    async fn send_and_record(
        &self,
        job: &Job<'_>,
        token: Uuid,
        earlier_calls: i32,
        tiers_used: u32,
        resend_maybe_sent: bool,
    ) -> Result<Decision, StoreError> {
        let (envelope, key) = (job.envelope, job.key);
        let gate = self.transmit_gate(key, token);
        let mut calls: u32 = 0;
        loop {
            let waited = self.throttle(envelope.channel, job.campaign).await?;
            // A throttled message may have waited long for its slot: a campaign stopped meanwhile
            // (an audience fan-out halted mid-way) sends nothing more. From the cache, which a
            // stop invalidates within milliseconds; only after a wait, since the campaign was
            // found live just before otherwise.
            if waited && calls == 0 && !self.still_live(envelope).await? {
                self.finish(Finish {
                    key: key.clone(),
                    token,
                    status: DeliveryStatus::Excluded,
                    reason: Some(reasons::CAMPAIGN_NOT_LIVE.to_string()),
                    provider_message_id: None,
                    calls: 0,
                    last_error: None,
                    retry_after: None,
                    now: self.clock.now(),
                })
                .await;
                observe::outcome(
                    self.metrics(),
                    key.channel,
                    DeliveryStatus::Excluded,
                    Some(reasons::CAMPAIGN_NOT_LIVE),
                );
                return Ok(Decision::Ack);
            }
            if !self.provider.gates_transmission() {
                // Opens at once after the first time.
                let opened = gate.open_here().await;
                if let Some(refused) = refused(key, opened) {
                    return refused;
                }
            }
            calls += 1;
            let operation = self.provider.binding(envelope.channel).operation;
            let call = tracing::info_span!(
                "provider call",
                otel.name = %format!("{}/{}", operation.service, operation.method),
                otel.kind = "client",
                rpc.system = operation.system,
                rpc.service = operation.service,
                rpc.method = operation.method,
                herald.channel = envelope.channel.as_str(),
                error.type = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let started = std::time::Instant::now();
            let result = transmit::through(gate.clone(), self.send_once(job)).instrument(call.clone()).await;
            let result = match gate.answer() {
                Some(opened) => match refused(key, opened) {
                    Some(refused) => return refused,
                    None => result,
                },
                // No request reached the connection: whatever failed, nothing was sent.
                None => result.map_err(|mut error| {
                    if error.class == ErrorClass::MaybeDelivered {
                        error.class = ErrorClass::Transient;
                    }
                    error
                }),
            };
            observe::provider_call(self.metrics(), envelope.channel, result.is_ok(), started.elapsed().as_secs_f64());
            let now = self.clock.now();
            let calls_i32 = i32::try_from(calls).unwrap_or(i32::MAX);
            let outcome = |status, reason: Option<String>, calls, last_error: Option<String>, retry_after| Finish {
                key: key.clone(),
                token,
                status,
                reason,
                provider_message_id: None,
                calls,
                last_error,
                retry_after,
                now,
            };
            let error = match result {
                Ok(receipt) => {
                    self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let latency = (now - envelope.accepted_at).num_milliseconds();
                    #[allow(clippy::cast_precision_loss)]
                    observe::accepted_to_sent(self.metrics(), envelope.channel, latency as f64 / 1000.0);
                    let mut sent = outcome(DeliveryStatus::Sent, None, calls_i32, None, None);
                    sent.provider_message_id = Some(receipt.provider_message_id);
                    self.finish(sent).await;
                    return Ok(Decision::Ack);
                }
                Err(error) => error,
            };
            call.record("error.type", error.code.as_str());
            call.record("otel.status_code", "ERROR");
            // Stored and shown to operators (dead letters): provider messages can quote the recipient.
            let last_error = herald_telemetry::redact::redact(&error.to_string()).into_owned();
            let attempt = Attempt { earlier_calls: u32::try_from(earlier_calls).unwrap_or(0), calls, tiers_used };
            let after =
                self.settings.policy.after_failure(error.class, &error.code, attempt, resend_maybe_sent, jitter());
            if let AfterFailure::CallAgain { delay } = after {
                observe::retry(self.metrics(), envelope.channel, None);
                tokio::time::sleep(delay).await;
                continue;
            }
            // The decision's side effects, before its row is written: the push token, logs.
            match &after {
                AfterFailure::Fail { .. } if error.token_dead => {
                    if let Some(push) = &job.resolved.push
                        && let Err(store_error) = self
                            .store
                            .mark_push_token_dead(&envelope.sandbox, &push.application_arn, &push.token, now)
                            .await
                    {
                        tracing::warn!(error = %store_error, "could not mark a push token dead");
                    }
                }
                AfterFailure::Fail { .. } if self.provider.binding(envelope.channel).opted_out(&error.code) => {
                    // The number opted out of SMS: later sends are excluded before any call.
                    if let Some(number) = feedback::suppression_address(envelope.channel, &job.resolved.address)
                        && let Err(store_error) = self
                            .store
                            .suppress(
                                &envelope.sandbox,
                                envelope.channel,
                                &number,
                                (SuppressionReason::OptedOut, "sns:OptedOut", None),
                                now,
                            )
                            .await
                    {
                        tracing::warn!(error = %store_error, "could not suppress an opted-out number");
                    }
                }
                AfterFailure::MaybeSent => {
                    tracing::warn!(execution_id = %key.execution_id, code = %error.code, channel = %envelope.channel,
                        "the provider may have delivered this message (no usable answer); recorded unknown, not resent");
                }
                AfterFailure::PauseChannel => {
                    tracing::warn!(channel = %envelope.channel, code = %error.code, "account-wide provider failure; pausing the channel");
                }
                _ => {}
            }
            let Some(failed) = after.outcome(&error.code, attempt, self.first_tier(), &last_error) else {
                continue;
            };
            // The provider's own words (redacted like every stored error) say why, e.g. an
            // unverified sender's MessageRejected: operators should not need the database for it.
            tracing::warn!(execution_id = %key.execution_id, channel = %envelope.channel, code = %error.code,
                status = failed.status.as_str(), reason = %failed.reason, error = %last_error, "provider call failed");
            let counted = i32::try_from(failed.calls).unwrap_or(i32::MAX);
            let row = outcome(failed.status, Some(failed.reason), counted, Some(last_error), failed.retry_after);
            self.finish(row).await;
            if let Decision::Retry { tiers_used, .. } = &failed.decision {
                observe::retry(self.metrics(), envelope.channel, Some(*tiers_used));
            }
            return Ok(failed.decision);
        }
    }

    /// Whether the envelope's campaign is still live, as the campaign cache has it now.
    async fn still_live(&self, envelope: &Envelope) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let campaign = self.campaigns.get(&envelope.sandbox, envelope.campaign_id).await?;
        Ok(campaign.is_some_and(|c| c.record.status(now) == CampaignStatus::Live))
    }

    /// Waits for a send slot of the campaign's throttle and of the channel's provider rate;
    /// both are shared by all workers through the database. Whether it had to wait.
    async fn throttle(&self, channel: Channel, campaign: &CampaignRecord) -> Result<bool, StoreError> {
        let mut wait = Duration::ZERO;
        if let Some(rate) = campaign.live.as_ref().and_then(|live| live.definition.throttle_rate_per_sec) {
            wait = wait.max(self.store.reserve_send_slot(&format!("campaign:{}", campaign.id), f64::from(rate)).await?);
        }
        if let Some((_, rate)) = self.settings.channel_rates.iter().find(|(c, rate)| *c == channel && *rate > 0.0) {
            wait = wait.max(self.store.reserve_send_slot(&format!("channel:{channel}"), *rate).await?);
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(!wait.is_zero())
    }

    async fn send_once(&self, job: &Job<'_>) -> ProviderResult<Receipt> {
        let (envelope, resolved, rendered) = (job.envelope, job.resolved, job.rendered);
        let definition = &job.live.definition;
        let part = |name: &str| rendered.get(name).cloned();
        match envelope.channel {
            Channel::Email => {
                let surface = &definition.surface;
                let address = surface.from_address.clone().unwrap_or_default();
                let from = match &surface.from_name {
                    Some(name) => format!("\"{}\" <{address}>", name.replace('"', "")),
                    None => address,
                };
                let message = EmailMessage {
                    from,
                    reply_to: surface.reply_to.clone(),
                    to: resolved.address.clone(),
                    subject: part("subject").unwrap_or_default(),
                    html: part("html"),
                    text: part("text"),
                    // SES returns them in every event about the message (herald_core::feedback).
                    tags: vec![
                        (feedback::TAG_EXECUTION_ID.into(), envelope.execution_id.to_string()),
                        (feedback::TAG_CAMPAIGN_ID.into(), envelope.campaign_id.to_string()),
                        (feedback::TAG_RECIPIENT_INDEX.into(), envelope.recipient_index.to_string()),
                    ],
                    configuration_set: surface
                        .configuration_set
                        .clone()
                        .or_else(|| self.settings.ses_configuration_set.clone()),
                };
                self.provider.send_email(&message).await
            }
            Channel::Sms => {
                let message = SmsMessage {
                    to: resolved.address.clone(),
                    body: part("body").unwrap_or_default(),
                    sender_id: definition.surface.sender_id.clone(),
                    origination_number: definition.surface.origination_number.clone(),
                };
                self.provider.send_sms(&message).await
            }
            Channel::Push => {
                let target = resolved
                    .push
                    .as_ref()
                    .ok_or_else(|| ProviderError::new(ErrorClass::Permanent, "NoTarget", "no push target"))?;
                let endpoint = self.push_endpoint(&envelope.sandbox, &target.application_arn, &target.token).await?;
                let data = rendered
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("data.").map(|k| (k.to_string(), v.clone())))
                    .collect();
                let message = PushMessage { title: part("title"), body: part("body").unwrap_or_default(), data };
                self.provider.send_push(&endpoint, &message).await
            }
        }
    }

    /// The endpoint for (application, token), created once and remembered.
    async fn push_endpoint(&self, sandbox: &str, application_arn: &str, token: &str) -> ProviderResult<String> {
        let unavailable = |error: StoreError| {
            ProviderError::new(ErrorClass::Transient, "Database", format!("endpoint lookup: {error}"))
        };
        if let Some((endpoint, dead)) =
            self.store.push_endpoint(sandbox, application_arn, token).await.map_err(unavailable)?
        {
            if dead {
                let mut error =
                    ProviderError::new(ErrorClass::Permanent, "EndpointDisabled", "the token was disabled earlier");
                error.token_dead = true;
                return Err(error);
            }
            return Ok(endpoint);
        }
        // Not the send: it must not set the call mark (a timeout here sent nothing).
        let endpoint = transmit::outside_gate(self.provider.create_push_endpoint(application_arn, token)).await?;
        self.store
            .remember_push_endpoint(sandbox, application_arn, token, &endpoint, self.clock.now())
            .await
            .map_err(unavailable)?;
        Ok(endpoint)
    }
}

/// What a delivery becomes when its call gate did not open: the claim was taken over (the copy
/// that took it sends; acknowledge this one) or the mark could not be written (nothing left the
/// process; put the message back). `None` when the gate opened.
fn refused(key: &DeliveryKey, opened: transmit::GateAnswer) -> Option<Result<Decision, StoreError>> {
    match opened {
        Ok(true) => None,
        Ok(false) => {
            tracing::info!(execution_id = %key.execution_id, "claim taken over before the call; not calling");
            Some(Ok(Decision::Ack))
        }
        Err(error) => Some(Err(StoreError::Unavailable(format!("call mark: {error}")))),
    }
}

fn envelope_version_ok(envelope: &Envelope) -> bool {
    envelope.version == ENVELOPE_VERSION
}
