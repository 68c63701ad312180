//! Customer feedback webhooks (AJO's feedback webhook): every outcome and feedback event of a
//! sandbox that configured one is POSTed to its URL, signed the Standard Webhooks way
//! ([`sign`]). Events come from the outbox the delivery triggers fill in the outcome's own
//! transaction; [`Webhooks::relay`] publishes them to the `webhooks` queue (confirmed, then
//! deleted), and the delivery loop hands each one to [`Webhooks::deliver`], whose decision goes
//! through the same retry tiers and dead-letter queue as messages: a receiver that is down for
//! minutes loses nothing, and what it never takes is a replayable dead letter.
//!
//! The receiver is a URL a tenant typed, fetched from inside the operator's network: names are
//! resolved by a resolver that drops non-public addresses ([`herald_core::feedback::ssrf`]), so
//! a name that later points at 169.254.169.254 or 10.x is not reached either.

pub mod sign;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::Clock;
use herald_core::delivery::Decision;
use herald_core::feedback::ssrf;
use herald_store::{OutboxEvent, Store};
use ipnet::IpNet;
use serde_json::{Value, json};

use herald_broker::topology::Topology;

const ROUTING_KEY: &str = Topology::WEBHOOK_ROUTING_KEY;
pub const DEAD_REASON: &str = "webhook-undeliverable";

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Networks a webhook may reach although they are not public (`HERALD_WEBHOOK_ALLOWED_NETWORKS`).
    pub allowed_networks: Vec<IpNet>,
    /// Deliveries of one event (each through a retry tier) before it is dead-lettered.
    pub max_attempts: u32,
    /// How long a receiver may take to answer.
    pub timeout: Duration,
    /// The topology's retry tiers, shortest first.
    pub tiers: Vec<Duration>,
}

/// Resolves names as the system does, keeping only addresses a webhook may reach.
#[derive(Debug)]
struct GuardedResolver {
    allowed: Vec<IpNet>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let reachable: Vec<SocketAddr> = found.into_iter().filter(|a| ssrf::allowed(a.ip(), &allowed)).collect();
            if reachable.is_empty() {
                return Err("the webhook's host resolves only to addresses that are not public".into());
            }
            Ok(Box::new(reachable.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Debug)]
pub struct Webhooks {
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: Arc<herald_telemetry::Metrics>,
    http: reqwest::Client,
    settings: WebhookSettings,
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// 410 Gone: the receiver asks for no more.
    Gone,
    /// Worth another try later: a connection failure, a timeout, 408, 429, 5xx.
    Transient(String),
    /// The receiver refuses it (another 4xx), or the URL may not be reached.
    Refused(String),
}

impl Webhooks {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        metrics: Arc<herald_telemetry::Metrics>,
        settings: WebhookSettings,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver { allowed: settings.allowed_networks.clone() }))
            .user_agent("Herald-Webhooks/1")
            .build()
            .unwrap_or_default();
        Self { store, clock, metrics, http, settings }
    }

    /// Delivers one queued event (`body` is the exact JSON POSTed; `event_id` its AMQP message id).
    pub async fn deliver(&self, body: &[u8], event_id: Option<&str>, tiers_used: u32) -> Decision {
        let sandbox = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|payload| payload.get("sandbox").and_then(Value::as_str).map(str::to_string));
        let (Some(sandbox), Some(event_id)) = (sandbox, event_id) else {
            return Decision::DeadLetter { reason: DEAD_REASON.into(), last_error: "not a webhook event".into() };
        };
        let target = match self.store.webhook_target(&sandbox).await {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(%error, "webhook: database unavailable; the event goes back to a tier");
                return self.retry(tiers_used, "database unavailable");
            }
        };
        let Some((url, secret)) = target else {
            // Removed or disabled since the event was queued: nobody to tell.
            self.metrics.webhook("dropped");
            return Decision::Ack;
        };
        match self.attempt(&url, &secret, event_id, body).await {
            Attempt::Delivered => {
                self.metrics.webhook("delivered");
                Decision::Ack
            }
            Attempt::Gone => {
                tracing::warn!(%sandbox, "the webhook receiver answered 410 Gone; the webhook is disabled");
                self.metrics.webhook("gone");
                match self.store.disable_webhook(&sandbox, "the receiver answered 410 Gone", self.clock.now()).await {
                    Ok(()) => Decision::Ack,
                    Err(_) => self.retry(tiers_used, "could not disable the webhook"),
                }
            }
            Attempt::Transient(why) => {
                let decision = self.retry(tiers_used, &why);
                if matches!(decision, Decision::Retry { .. }) {
                    self.metrics.webhook("retried");
                    tracing::info!(%sandbox, error = %why, attempt = tiers_used + 1, "webhook delivery failed; it goes to a retry tier");
                } else {
                    tracing::warn!(%sandbox, error = %why, attempt = tiers_used + 1, "webhook delivery failed for the last time; dead-lettered (replayable)");
                }
                decision
            }
            Attempt::Refused(why) => {
                self.metrics.webhook("dead-lettered");
                tracing::warn!(%sandbox, error = %why, "webhook refused; dead-lettered (replayable)");
                Decision::DeadLetter { reason: DEAD_REASON.into(), last_error: why }
            }
        }
    }

    fn retry(&self, tiers_used: u32, why: &str) -> Decision {
        if tiers_used + 1 >= self.settings.max_attempts {
            self.metrics.webhook("dead-lettered");
            return Decision::DeadLetter {
                reason: DEAD_REASON.into(),
                last_error: format!("after {} attempts: {why}", tiers_used + 1),
            };
        }
        let index = usize::try_from(tiers_used).unwrap_or(usize::MAX).min(self.settings.tiers.len().saturating_sub(1));
        let tier = self.settings.tiers.get(index).copied().unwrap_or(Duration::from_secs(5));
        Decision::Retry { tier, tiers_used: tiers_used + 1 }
    }

    async fn attempt(&self, url: &str, secret: &str, event_id: &str, body: &[u8]) -> Attempt {
        let Some(parsed) = reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https")) else {
            return Attempt::Refused("not an http(s) URL".into());
        };
        // A literal IP is not resolved, so the resolver cannot refuse it: checked here.
        if let Some(host) = parsed.host_str()
            && let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse()
            && !ssrf::allowed(ip, &self.settings.allowed_networks)
        {
            return Attempt::Refused("the URL's address is not public".into());
        }
        let timestamp = self.clock.now().timestamp();
        let Some(signature) = sign::signature(secret, event_id, timestamp, body) else {
            return Attempt::Refused("the webhook's secret is unusable; set the webhook again".into());
        };
        let sent = self
            .http
            .post(parsed)
            .header("content-type", "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(answer) => match answer.status().as_u16() {
                200..=299 => Attempt::Delivered,
                410 => Attempt::Gone,
                408 | 429 | 500..=599 => Attempt::Transient(format!("the receiver answered {}", answer.status())),
                _ => Attempt::Refused(format!("the receiver answered {}", answer.status())),
            },
            Err(error) if error.is_timeout() => Attempt::Transient("the receiver did not answer in time".into()),
            Err(error) if error.is_connect() => Attempt::Transient("could not connect to the receiver".into()),
            Err(error) => Attempt::Transient(format!("{}", error.without_url())),
        }
    }

    /// Publishes up to 100 outbox events (confirmed) and deletes them; how many it moved.
    pub async fn relay(&self, publisher: &lapin::Channel, exchange: &str) -> Result<usize, String> {
        let published = self
            .store
            .relay_webhook_outbox(100, |events| async move {
                // Every event is handed to the broker first, then the confirms are awaited
                // together: one round trip per batch, not one per event.
                let mut confirms = Vec::with_capacity(events.len());
                for event in &events {
                    let body = payload(event).to_string();
                    let properties = lapin::BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_message_id(event.event_id.clone().into());
                    let options = lapin::options::BasicPublishOptions { mandatory: true, ..Default::default() };
                    match publisher
                        .basic_publish(exchange.into(), ROUTING_KEY.into(), options, body.as_bytes(), properties)
                        .await
                    {
                        Ok(confirm) => confirms.push(confirm),
                        Err(_) => return false,
                    }
                }
                for confirm in confirms {
                    let Ok(confirm) = confirm.await else { return false };
                    if confirm.is_nack() || confirm.take_message().is_some() {
                        return false;
                    }
                }
                true
            })
            .await
            .map_err(|error| error.to_string())?;
        Ok(published)
    }
}

/// AJO's feedback webhook body for one event.
pub fn payload(event: &OutboxEvent) -> Value {
    let status = if event.event_type == "excluded" { "exclude" } else { event.event_type.as_str() };
    let exclusion = (event.event_type == "excluded").then(|| json!({ "category": "excluded", "reason": event.reason }));
    let failure = match event.event_type.as_str() {
        "bounce" => {
            let detail = event.feedback_detail.as_deref().unwrap_or_default();
            let (kind, sub_kind) = detail.split_once('/').unwrap_or((detail, ""));
            let hard = if kind == "Permanent" { "hard" } else { "soft" };
            Some(json!({ "category": "bounce", "type": hard, "code": sub_kind, "reason": detail }))
        }
        "complaint" => Some(
            json!({ "category": "complaint", "type": "complaint", "code": event.feedback_detail, "reason": event.feedback_detail }),
        ),
        "error" => Some(
            json!({ "category": "error", "type": event.reason, "code": event.reason, "reason": event.feedback_detail.as_ref().or(event.reason.as_ref()) }),
        ),
        _ => None,
    };
    // The recipient as the execution named it (its id masked where it is an address); an
    // external recipient's namespace is its channel's address namespace.
    let identity_map = event.recipient.as_ref().map(|r| {
        let channel_namespace = herald_core::Channel::parse(&event.channel).and_then(|c| c.address_namespace());
        let namespace = r
            .get("namespace")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .or(channel_namespace)
            .unwrap_or("external")
            .to_string();
        json!({ namespace: [{ "id": r.get("userId") }] })
    });
    json!({
        "eventId": event.event_id,
        "eventType": "message.feedback",
        "timestamp": event.created_at,
        "requestId": event.request_id,
        "sandbox": event.sandbox,
        "channel": event.channel,
        "messageExecution": {
            "messageExecutionID": event.execution_id,
            "recipientIndex": event.recipient_index,
            "campaignID": event.campaign_id,
            "campaignVersionID": event.campaign_version_id,
        },
        "messageDeliveryFeedback": {
            "feedbackStatus": status,
            "messageExclusion": exclusion,
            "messageFailure": failure,
            "retryCount": (event.attempts - 1).max(0),
        },
        "identityMap": identity_map,
    })
}
