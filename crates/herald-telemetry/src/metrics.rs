//! The Prometheus metrics of every Herald process, in one registry per process (an API, a worker,
//! or both in `herald dev`), served as text at `/metrics`. Label values are drawn from small
//! fixed sets (routes, channels, statuses, provider error codes): never ids or addresses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub component: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub channel: &'static str,
    pub status: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub channel: &'static str,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub channel: &'static str,
    /// `in-process`, or the number of the retry tier the message was parked in.
    pub tier: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub channel: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub channel: &'static str,
    pub queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabels {
    /// `sqs` or `sns-push`.
    pub source: &'static str,
    /// SES's event type (`Bounce`, `Delivery`, ...), or `unreadable`.
    pub event: &'static str,
    /// `recorded`, `duplicate`, `unmatched`, `ignored` or `invalid`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `delivered`, `retried`, `gone`, `dead-lettered` or `dropped`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and provider latencies: 1 ms to 10 s.
fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

/// Accept→sent includes queueing and retry tiers: 10 ms to an hour.
fn accept_to_sent_histogram() -> Histogram {
    Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0])
}

/// Every metric a Herald process exposes; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistogramFamily<RouteLabels>,
    pub publish_confirm: Histogram,
    pub cache_lookups: Family<CacheLabels, Counter>,
    pub consumed: Family<ChannelLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub provider_duration: HistogramFamily<ProviderLabels>,
    pub accept_to_sent: HistogramFamily<ChannelLabels>,
    pub retries: Family<RetryLabels, Counter>,
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub pauses: Family<ReasonLabels, Counter>,
    pub paused: Family<ChannelLabels, Gauge>,
    /// Process-wide background jobs running, by name: each is started once per process.
    pub background_jobs: Family<JobLabels, Gauge>,
    /// Ready messages and consumers of each work queue, as the API last read them from the
    /// broker: messages with no consumer mean no worker runs for the channel.
    pub queue_messages: Family<QueueLabels, Gauge>,
    pub queue_consumers: Family<QueueLabels, Gauge>,
    /// Provider feedback events taken in (SES through SQS or an SNS push), by what became of them.
    pub feedback_events: Family<FeedbackLabels, Counter>,
    /// Customer webhook delivery attempts, by outcome.
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "herald_http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> = Family::new_with_constructor(latency_histogram);
        registry.register("herald_http_request_duration_seconds", "HTTP request latency", http_duration.clone());
        let publish_confirm = latency_histogram();
        registry.register(
            "herald_publish_confirm_duration_seconds",
            "From publishing an execution's messages until the broker confirmed them all",
            publish_confirm.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "herald_campaign_cache_lookups",
            "Campaign cache lookups, hits and misses",
            cache_lookups.clone(),
        );
        let consumed = Family::<ChannelLabels, Counter>::default();
        registry.register("herald_messages_consumed", "Messages a worker took from the broker", consumed.clone());
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "herald_delivery_outcomes",
            "Delivery outcomes by channel, status and reason",
            outcomes.clone(),
        );
        let provider_duration: HistogramFamily<ProviderLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "herald_provider_call_duration_seconds",
            "Provider (SES/SNS) call latency",
            provider_duration.clone(),
        );
        let accept_to_sent: HistogramFamily<ChannelLabels> = Family::new_with_constructor(accept_to_sent_histogram);
        registry.register(
            "herald_accept_to_sent_seconds",
            "From the API accepting a request until the provider accepted the message",
            accept_to_sent.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register("herald_retries", "Retries, in process or through a retry tier", retries.clone());
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        registry.register("herald_dead_letters", "Messages sent to the dead-letter queue", dead_letters.clone());
        let pauses = Family::<ReasonLabels, Counter>::default();
        registry.register("herald_channel_pauses", "Times a worker paused a channel", pauses.clone());
        let paused = Family::<ChannelLabels, Gauge>::default();
        registry.register("herald_channel_paused", "1 while a channel is paused in this worker", paused.clone());
        let background_jobs = Family::<JobLabels, Gauge>::default();
        registry.register(
            "herald_background_jobs",
            "Background jobs running in this process, by job (each runs once per process)",
            background_jobs.clone(),
        );
        let queue_messages = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "herald_queue_messages",
            "Messages ready in each work queue (read from the broker by the API every 15 s)",
            queue_messages.clone(),
        );
        let queue_consumers = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "herald_queue_consumers",
            "Consumers (worker channels) attached to each work queue (read by the API every 15 s)",
            queue_consumers.clone(),
        );
        let feedback_events = Family::<FeedbackLabels, Counter>::default();
        registry.register(
            "herald_feedback_events",
            "Provider feedback events taken in (delivery, bounce, complaint), by source, event and outcome",
            feedback_events.clone(),
        );
        let webhook_deliveries = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "herald_webhook_deliveries",
            "Customer feedback webhook delivery attempts, by outcome",
            webhook_deliveries.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            publish_confirm,
            cache_lookups,
            consumed,
            outcomes,
            provider_duration,
            accept_to_sent,
            retries,
            dead_letters,
            pauses,
            paused,
            background_jobs,
            queue_messages,
            queue_consumers,
            feedback_events,
            webhook_deliveries,
        }
    }

    /// Counts one webhook delivery attempt.
    pub fn webhook(&self, outcome: &'static str) {
        self.webhook_deliveries.get_or_create(&WebhookLabels { outcome }).inc();
    }

    /// Counts one feedback event.
    pub fn feedback(&self, source: &'static str, event: &'static str, outcome: &'static str) {
        self.feedback_events.get_or_create(&FeedbackLabels { source, event, outcome }).inc();
    }

    /// Sets a work queue's gauges from what the broker said, or removes them while it cannot say
    /// (a stale zero would raise or hide the no-consumer alert).
    pub fn queue_state(&self, channel: &'static str, queue: &str, held: Option<(u32, u32)>) {
        let labels = QueueLabels { channel, queue: queue.to_string() };
        match held {
            Some((messages, consumers)) => {
                self.queue_messages.get_or_create(&labels).set(i64::from(messages));
                self.queue_consumers.get_or_create(&labels).set(i64::from(consumers));
            }
            None => {
                self.queue_messages.remove(&labels);
                self.queue_consumers.remove(&labels);
            }
        }
    }

    /// Counts one campaign cache lookup of `component` (`ingest` or `worker`).
    pub fn cache_lookup(&self, component: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups.get_or_create(&CacheLabels { component, result }).inc();
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_exposed_with_their_labels() {
        let metrics = Metrics::new();
        metrics.outcomes.get_or_create(&OutcomeLabels { channel: "sms", status: "sent", reason: String::new() }).inc();
        metrics.cache_lookup("worker", true);
        metrics.accept_to_sent.get_or_create(&ChannelLabels { channel: "sms" }).observe(0.2);
        let text = metrics.encode();
        assert!(
            text.contains("herald_delivery_outcomes_total{channel=\"sms\",status=\"sent\",reason=\"\"} 1"),
            "{text}"
        );
        assert!(text.contains("herald_campaign_cache_lookups_total{component=\"worker\",result=\"hit\"} 1"), "{text}");
        assert!(text.contains("herald_accept_to_sent_seconds_bucket{le=\"0.25\",channel=\"sms\"} 1"), "{text}");
        assert!(text.contains("herald_accept_to_sent_seconds_count{channel=\"sms\"} 1"), "{text}");
    }
}
