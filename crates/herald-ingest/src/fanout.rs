//! The durable fan-out of audience executions, and the firing of their schedules.
//!
//! Every API process runs [`Ingest::run_fanouts`]. It fires due schedules (one statement under
//! row locks: each fires once, whichever instance sees it first) and takes the lease of running
//! fan-outs nobody holds. A fan-out pages through its audience snapshot by position, publishes a
//! page (confirmed by the broker), then checkpoints the next position in PostgreSQL with its
//! lease renewed. The message id of a member is `<executionId>/<position>`, so a page published
//! again after a crash between its confirms and its checkpoint is sent once by the workers. A
//! process that dies leaves its lease to run out; another takes the fan-out over from its last
//! checkpoint. Sending stays the workers': the fan-out only publishes.
//!
//! Before each page the fan-out checks the campaign is still live (from the NOTIFY-invalidated
//! cache: a stop is seen within milliseconds) and that its 12 h window is open; either failing
//! ends it, and every member not yet published is recorded excluded with the reason. It publishes
//! no faster than the campaign's `throttleRatePerSec`, and waits while the shard queue already
//! holds `queue_limit` ready messages, so a million-member audience never sits in the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use herald_core::audience::filter;
use herald_core::clock::Clock;
use herald_core::delivery::reasons;
use herald_core::execution::{ENVELOPE_VERSION, Envelope, Recipient};
use herald_core::{CampaignStatus, Channel};
use herald_store::{AudienceExecution, AudienceKind, StoreError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Ingest, outgoing};

/// Why a fan-out ended before publishing everything (the reason its unreached members get).
pub const AUDIENCE_GONE: &str = "audience-deleted";
pub const WINDOW_PASSED: &str = "execution-window-passed";
/// The sandbox's daily quota for the channel was used up.
pub const QUOTA_EXCEEDED: &str = "quota-exceeded";

#[derive(Debug, Clone)]
pub struct FanoutSettings {
    /// Members read and published per step (one confirm round, one checkpoint).
    pub page_size: i64,
    /// Ready messages in the shard queue above which the fan-out waits for workers.
    pub queue_limit: u32,
    /// How long a fan-out's lease lasts without a checkpoint: after a crash, another instance
    /// takes it over this long after the last one.
    pub lease: Duration,
    /// How long after it fires a fan-out may publish (AJO's 12 h rule).
    pub window: Duration,
    /// How often each process looks for due schedules and fan-outs nobody holds.
    pub poll: Duration,
    /// Fan-outs one process publishes at once.
    pub concurrency: usize,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        Self {
            page_size: 500,
            queue_limit: 5_000,
            lease: Duration::from_secs(10),
            window: Duration::from_secs(12 * 3600),
            poll: Duration::from_millis(500),
            concurrency: 4,
        }
    }
}

/// What ended one step of a fan-out.
enum Step {
    Continue,
    Wait(Duration),
    Done,
}

struct Job {
    ingest: Arc<Ingest>,
    clock: Arc<dyn Clock>,
    owner: Uuid,
    execution: AudienceExecution,
    channel: Channel,
    generation: i32,
    cursor: i32,
    /// When the next page may go out under the campaign's throttle.
    next_page_at: Instant,
    renewed_at: Instant,
}

fn chrono_of(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

impl Ingest {
    /// The fan-out loop of one process: fires due schedules and publishes up to
    /// `concurrency` fan-outs, until `stop`; then it gives its leases up for another instance.
    pub async fn run_fanouts(self: Arc<Self>, clock: Arc<dyn Clock>, stop: CancellationToken) {
        let owner = Uuid::now_v7();
        let settings = self.settings.fanout.clone();
        let mut running = JoinSet::new();
        // The fan-outs this process publishes: never leased again by it while they run, even if a
        // stall let their lease run out.
        let mut mine: Vec<Uuid> = Vec::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(settings.poll) => {}
                () = self.fanout_wake.notified() => {}
                Some(ended) = running.join_next(), if !running.is_empty() => {
                    if let Ok(id) = ended {
                        mine.retain(|running| *running != id);
                    }
                }
            }
            let now = clock.now();
            match self.store.fire_due_schedules(now, chrono_of(settings.window), 100).await {
                Ok(fired) => {
                    for (execution_id, late_ms) in fired {
                        if late_ms > 1000 {
                            tracing::warn!(%execution_id, late_ms, "a schedule fired late (no instance was running when it was due)");
                        } else {
                            tracing::info!(%execution_id, late_ms, "schedule fired");
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not fire due schedules"),
            }
            while running.len() < settings.concurrency {
                let now = clock.now();
                match self.store.lease_fanout(owner, now, now + chrono_of(settings.lease), &mine).await {
                    Ok(Some(execution)) => {
                        mine.push(execution.execution_id);
                        let job = Job::start(Arc::clone(&self), Arc::clone(&clock), owner, execution);
                        running.spawn(job.run(stop.clone()));
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "could not look for fan-outs to publish");
                        break;
                    }
                }
            }
        }
        while running.join_next().await.is_some() {}
    }
}

impl Job {
    fn start(ingest: Arc<Ingest>, clock: Arc<dyn Clock>, owner: Uuid, execution: AudienceExecution) -> Self {
        let now = Instant::now();
        Self {
            ingest,
            clock,
            owner,
            cursor: execution.cursor,
            execution,
            channel: Channel::Sms,
            generation: 0,
            next_page_at: now,
            renewed_at: now,
        }
    }

    fn id(&self) -> Uuid {
        self.execution.execution_id
    }

    /// Publishes until the fan-out ends, the lease is lost or `stop`; returns the execution id.
    async fn run(mut self, stop: CancellationToken) -> Uuid {
        let execution_id = self.id();
        match self.prepare().await {
            Ok(true) => {}
            Ok(false) => return execution_id,
            Err(error) => {
                tracing::warn!(%error, %execution_id, "could not start the fan-out; another attempt follows");
                self.release().await;
                return execution_id;
            }
        }
        loop {
            if stop.is_cancelled() {
                self.release().await;
                return execution_id;
            }
            let wait = match self.step().await {
                Ok(Step::Continue) => continue,
                Ok(Step::Done) => return execution_id,
                Ok(Step::Wait(wait)) => wait,
                Err(error) => {
                    tracing::warn!(%error, %execution_id, cursor = self.cursor, "fan-out step failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fixes the snapshot; `false` when the fan-out ended (or is no longer ours).
    async fn prepare(&mut self) -> Result<bool, StoreError> {
        let (sandbox, execution_id) = (self.execution.sandbox.clone(), self.id());
        let Some(campaign) = self.ingest.campaigns.get(&sandbox, self.execution.campaign_id).await? else {
            return self.end(Some(reasons::CAMPAIGN_NOT_LIVE)).await.map(|_| false);
        };
        self.channel = campaign.channel;
        let audience = self.ingest.store.get_audience(&sandbox, self.execution.audience_id).await?;
        let compiled = match audience.as_ref() {
            None if self.execution.generation.is_none() => return self.end(Some(AUDIENCE_GONE)).await.map(|_| false),
            Some(audience) if audience.kind == AudienceKind::Filter && self.execution.generation.is_none() => {
                let raw = audience.filter.clone().unwrap_or_default();
                match filter::parse(&raw, "/filter") {
                    Ok(parsed) => Some(parsed.compile(4)),
                    Err(_) => return self.end(Some(AUDIENCE_GONE)).await.map(|_| false),
                }
            }
            _ => None,
        };
        let now = self.clock.now();
        let snapshot =
            match self.ingest.store.start_fanout(execution_id, self.owner, self.channel, compiled.as_ref(), now).await?
            {
                None => return Ok(false),
                Some(None) => return self.end(Some(AUDIENCE_GONE)).await.map(|_| false),
                Some(Some(snapshot)) => snapshot,
            };
        self.generation = snapshot.generation;
        tracing::info!(%execution_id, targeted = snapshot.targeted, cursor = self.cursor, "fan-out publishing");
        Ok(true)
    }

    /// Ends the fan-out (`None`: all published). Its members not yet published are excluded
    /// with `failure`.
    async fn end(&self, failure: Option<&str>) -> Result<(), StoreError> {
        let now = self.clock.now();
        let ended = self.ingest.store.finish_fanout(self.id(), self.owner, failure, self.channel, now).await?;
        if ended {
            tracing::info!(execution_id = %self.id(), failure, published_up_to = self.cursor, "fan-out ended");
            if let Err(error) = self.ingest.store.prune_audience(self.execution.audience_id).await {
                tracing::warn!(%error, "could not delete an audience's unused members");
            }
        }
        Ok(())
    }

    async fn release(&self) {
        if let Err(error) = self.ingest.store.release_fanout(self.id(), self.owner).await {
            tracing::warn!(%error, execution_id = %self.id(), "could not release a fan-out; another instance takes it over when its lease ends");
        }
    }

    /// Renews the lease without moving the cursor while the fan-out waits; `false` if lost.
    async fn renew(&mut self) -> Result<bool, StoreError> {
        let lease = self.ingest.settings.fanout.lease;
        if self.renewed_at.elapsed() < lease / 3 {
            return Ok(true);
        }
        let until = self.clock.now() + chrono_of(lease);
        let kept = self.ingest.store.checkpoint_fanout(self.id(), self.owner, self.cursor, until).await?;
        self.renewed_at = Instant::now();
        Ok(kept)
    }

    async fn step(&mut self) -> Result<Step, StoreError> {
        let settings = self.ingest.settings.fanout.clone();
        let now = self.clock.now();
        let campaign = self.ingest.campaigns.get(&self.execution.sandbox, self.execution.campaign_id).await?;
        let live = campaign.as_ref().filter(|c| c.status(now) == CampaignStatus::Live);
        let Some(live) = live.and_then(|c| c.live.as_ref()) else {
            self.end(Some(reasons::CAMPAIGN_NOT_LIVE)).await?;
            return Ok(Step::Done);
        };
        if self.execution.deadline.is_some_and(|deadline| now >= deadline) {
            self.end(Some(WINDOW_PASSED)).await?;
            return Ok(Step::Done);
        }
        if !self.renew().await? {
            return Ok(Step::Done);
        }
        let wait = self.next_page_at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            return Ok(Step::Wait(wait.min(Duration::from_millis(100))));
        }
        let topology = self.ingest.broker.topology();
        let queue = topology.queue_for(self.channel, &self.execution.sandbox);
        if let Some(held) = self.ingest.broker.queue_state(&queue).await
            && held.messages >= settings.queue_limit
        {
            return Ok(Step::Wait(Duration::from_millis(100)));
        }
        // Under a throttle, a page is at most a fifth of a second's rate, paced out evenly.
        let rate = live.throttle_rate_per_sec.filter(|rate| *rate > 0);
        let page_size = rate.map_or(settings.page_size, |rate| settings.page_size.min(i64::from(rate / 5).max(1)));
        let page = self
            .ingest
            .store
            .audience_page(self.execution.audience_id, self.generation, self.cursor, page_size)
            .await?;
        if page.is_empty() {
            self.end(None).await?;
            return Ok(Step::Done);
        }
        let Some((page, quota)) = self.take_quota(page, now).await? else {
            self.end(Some(QUOTA_EXCEEDED)).await?;
            return Ok(Step::Done);
        };
        let Some(&(last, _)) = page.last() else { return Ok(Step::Continue) };
        let accepted_at = chrono::SubsecRound::trunc_subsecs(now, 6);
        let window_end = self.execution.deadline;
        let ttl_end = live.message_ttl_seconds.map(|ttl| accepted_at + chrono::Duration::seconds(i64::from(ttl)));
        let expires_at = match (ttl_end, window_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let messages = self.messages(page, accepted_at, expires_at)?;
        let count = messages.len();
        if let Err(error) = self.ingest.broker.publish_all(&messages).await {
            tracing::warn!(%error, execution_id = %self.id(), cursor = self.cursor, "publishing a fan-out page failed; it is published again");
            return Ok(Step::Wait(Duration::from_secs(1)));
        }
        quota.commit();
        let cursor = last.saturating_add(1);
        let until = self.clock.now() + chrono_of(settings.lease);
        if !self.ingest.store.checkpoint_fanout(self.id(), self.owner, cursor, until).await? {
            tracing::warn!(execution_id = %self.id(), "lost a fan-out's lease; the instance holding it goes on");
            return Ok(Step::Done);
        }
        self.cursor = cursor;
        self.renewed_at = Instant::now();
        if let Some(rate) = rate {
            self.next_page_at = Instant::now().max(self.next_page_at)
                + Duration::from_secs_f64(f64::from(u32::try_from(count).unwrap_or(u32::MAX)) / f64::from(rate));
        }
        Ok(Step::Continue)
    }

    /// The sandbox's daily quota for as much of `page` as it allows (halving the page until it
    /// fits, so a fan-out stops exactly at the quota); `None` once not one more member fits.
    async fn take_quota(
        &self,
        mut page: herald_store::audiences::MemberPage,
        now: DateTime<Utc>,
    ) -> Result<Option<(herald_store::audiences::MemberPage, crate::ratelimit::QuotaHold)>, StoreError> {
        loop {
            match self.ingest.limiter.take_quota(&self.execution.sandbox, self.channel, now, page.len()).await {
                Ok(hold) => return Ok(Some((page, hold))),
                Err(crate::ratelimit::LimitError::Exceeded(_)) if page.len() > 1 => page.truncate(page.len() / 2),
                Err(crate::ratelimit::LimitError::Exceeded(_)) => return Ok(None),
                Err(crate::ratelimit::LimitError::Store(error)) => return Err(error),
            }
        }
    }

    fn messages(
        &self,
        page: herald_store::audiences::MemberPage,
        accepted_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Vec<herald_broker::OutgoingMessage>, StoreError> {
        let topology = self.ingest.broker.topology();
        let routing_key = topology.routing_key_for(self.channel, &self.execution.sandbox);
        let context = self.execution.context.as_object().cloned().unwrap_or_default();
        let traceparent = herald_telemetry::trace::new_traceparent();
        page.into_iter()
            .map(|(seq, member)| {
                let envelope = Envelope {
                    version: ENVELOPE_VERSION,
                    execution_id: self.id(),
                    request_id: self.execution.request_id.clone(),
                    campaign_id: self.execution.campaign_id,
                    sandbox: self.execution.sandbox.clone(),
                    channel: self.channel,
                    recipient_index: u32::try_from(seq).unwrap_or(u32::MAX),
                    recipient: Recipient {
                        kind: member.kind,
                        user_id: member.user_id,
                        namespace: member.namespace,
                        channel_data: None,
                    },
                    context: context.clone(),
                    profile: serde_json::Map::new(),
                    accepted_at,
                    expires_at,
                };
                outgoing(&envelope, routing_key.clone(), &traceparent)
                    .map_err(|error| StoreError::Corrupt(format!("an envelope did not serialize: {error}")))
            })
            .collect()
    }
}
