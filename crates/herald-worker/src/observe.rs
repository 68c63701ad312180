//! What the worker counts: outcomes, provider latency, accept→sent latency, retries, dead
//! letters and pauses. Label values come from fixed sets (channels, statuses, reasons).

use herald_core::Channel;
use herald_core::delivery::DeliveryStatus;
use herald_telemetry::Metrics;
use herald_telemetry::metrics::{ChannelLabels, OutcomeLabels, ProviderLabels, ReasonLabels, RetryLabels};

/// A channel label from a routing key's channel part, which a message from outside Herald may
/// set to anything.
fn channel_label(name: &str) -> &'static str {
    Channel::parse(name).map_or("other", Channel::as_str)
}

pub(crate) fn outcome_labels(channel: Channel, status: DeliveryStatus, reason: Option<&str>) -> OutcomeLabels {
    OutcomeLabels { channel: channel.as_str(), status: status.as_str(), reason: reason.unwrap_or_default().to_string() }
}

pub(crate) fn outcome(metrics: &Metrics, channel: Channel, status: DeliveryStatus, reason: Option<&str>) {
    metrics.outcomes.get_or_create(&outcome_labels(channel, status, reason)).inc();
}

pub(crate) fn provider_call(metrics: &Metrics, channel: Channel, ok: bool, seconds: f64) {
    let labels = ProviderLabels { channel: channel.as_str(), result: if ok { "ok" } else { "error" } };
    metrics.provider_duration.get_or_create(&labels).observe(seconds);
}

pub(crate) fn accepted_to_sent(metrics: &Metrics, channel: Channel, seconds: f64) {
    metrics.accept_to_sent.get_or_create(&ChannelLabels { channel: channel.as_str() }).observe(seconds.max(0.0));
}

/// A retry in process (`tier` none) or through retry tier number `tier` (1-based).
pub(crate) fn retry(metrics: &Metrics, channel: Channel, tier: Option<u32>) {
    let tier = tier.map_or_else(|| "in-process".to_string(), |n| n.to_string());
    metrics.retries.get_or_create(&RetryLabels { channel: channel.as_str(), tier }).inc();
}

pub(crate) fn dead_letter(metrics: &Metrics, channel: &str, reason: &str) {
    let labels = ReasonLabels { channel: channel_label(channel), reason: reason.to_string() };
    metrics.dead_letters.get_or_create(&labels).inc();
}

pub(crate) fn consumed(metrics: &Metrics, channel: Channel) {
    metrics.consumed.get_or_create(&ChannelLabels { channel: channel.as_str() }).inc();
}

/// A pause starts (`reason` some) or the channel works again (`reason` none).
pub(crate) fn paused(metrics: &Metrics, channel: Channel, reason: Option<&str>) {
    let gauge = metrics.paused.get_or_create(&ChannelLabels { channel: channel.as_str() });
    match reason {
        Some(reason) => {
            gauge.set(1);
            let labels = ReasonLabels { channel: channel.as_str(), reason: reason.to_string() };
            metrics.pauses.get_or_create(&labels).inc();
        }
        None => {
            gauge.set(0);
        }
    }
}
