//! The broker topology, declared idempotently by every API and worker process at start-up.
//!
//! ```text
//! PREFIX.work (direct) ──sms | sms.1 … sms.N-1──▶ PREFIX.sms | PREFIX.sms.1 … PREFIX.sms.N-1  (quorum)
//!        ▲              (the same for email, push)    │ delivery limit reached
//!        │ TTL expired                                 ▼
//! PREFIX.retry.Ns (quorum, x-message-ttl)   PREFIX.dead (fanout) ──▶ PREFIX.dead (quorum)
//!        ▲
//! PREFIX.retry (headers: herald-retry-tier = Ns)
//! ```
//!
//! Each channel has `shards` queues, and a sandbox's messages all go to one of them, chosen by a
//! hash of its name, so that workers, which consume every shard with the same prefetch and hand
//! out their concurrency first come first served, serve the shards in turn: one sandbox's burst
//! waits in its own shard instead of in front of everyone's OTPs. Shard 0 is the channel queue of
//! releases before sharding (`PREFIX.sms`, routing key `sms`), so a running deployment keeps its
//! queued messages, old publishers keep working, and `shards = 1` is the unsharded topology.
//!
//! The retry exchange routes on a header **without** the `x-` prefix: RabbitMQ ignores binding
//! keys that start with `x-` when matching (`x-match: all`), so a binding on such a header alone
//! matches every message, and every retry would be copied into every tier.
//!
//! Every argument is set explicitly: RabbitMQ 4.x changed defaults (a quorum queue now has a
//! delivery limit of 20 unless told otherwise) and the broker refuses a re-declaration whose
//! arguments differ, so relying on defaults would make mixed-version clusters fail at start-up.

use std::time::Duration;

use herald_core::Channel;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::headers::{LEGACY_RETRY_TIER, RETRY_TIER, count as long, text};

/// Names and limits of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Every exchange and queue name starts with this.
    pub prefix: String,
    /// Delays of the retry queues, shortest first.
    pub retry_tiers: Vec<Duration>,
    /// Deliveries of one message before the broker dead-letters it (poison messages).
    pub delivery_limit: u32,
    /// Bound on each channel queue (each shard); publishes beyond it are refused (and answered 503).
    pub max_queue_length: Option<u32>,
    /// Queues per channel; a sandbox's messages all go to one, by a hash of its name.
    pub shards: u16,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            prefix: "herald".into(),
            retry_tiers: vec![Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(300)],
            delivery_limit: 10,
            max_queue_length: None,
            shards: 8,
        }
    }
}

impl Topology {
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }

    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The channel's first shard, which is also its queue from before sharding.
    pub fn channel_queue(&self, channel: Channel) -> String {
        format!("{}.{}", self.prefix, channel.as_str())
    }

    /// The shard of `sandbox`: FNV-1a of its name (stable across processes, versions and
    /// platforms, unlike std's hasher), modulo the number of shards.
    pub fn shard_of(&self, sandbox: &str) -> u16 {
        let hash = sandbox
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
        u16::try_from(hash % u64::from(self.shards.max(1))).unwrap_or(0)
    }

    pub fn shard_queue(&self, channel: Channel, shard: u16) -> String {
        match shard {
            0 => self.channel_queue(channel),
            shard => format!("{}.{}.{shard}", self.prefix, channel.as_str()),
        }
    }

    pub fn shard_routing_key(channel: Channel, shard: u16) -> String {
        match shard {
            0 => channel.as_str().to_string(),
            shard => format!("{}.{shard}", channel.as_str()),
        }
    }

    /// Where ingest publishes `sandbox`'s messages for `channel`.
    pub fn routing_key_for(&self, channel: Channel, sandbox: &str) -> String {
        Self::shard_routing_key(channel, self.shard_of(sandbox))
    }

    /// The queue holding `sandbox`'s messages for `channel`.
    pub fn queue_for(&self, channel: Channel, sandbox: &str) -> String {
        self.shard_queue(channel, self.shard_of(sandbox))
    }

    /// Every shard queue of `channel`, the ones a worker consumes.
    pub fn channel_queues(&self, channel: Channel) -> Vec<String> {
        (0..self.shards.max(1)).map(|shard| self.shard_queue(channel, shard)).collect()
    }

    /// The channel part of a routing key (`sms.3` → `sms`).
    pub fn channel_of_routing_key(routing_key: &str) -> &str {
        routing_key.split('.').next().unwrap_or(routing_key)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Customer webhook events (routing key `webhooks` on the work exchange): they share the retry
    /// tiers and the dead-letter queue with messages.
    pub fn webhook_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }

    pub const WEBHOOK_ROUTING_KEY: &'static str = "webhooks";

    /// The tier's value of [`crate::headers::RETRY_TIER`], e.g. `30s`.
    pub fn tier_name(delay: Duration) -> String {
        format!("{}s", delay.as_secs())
    }

    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.retry.{}", self.prefix, Self::tier_name(delay))
    }

    /// Every queue of the topology (for purging or deleting in tests and tools).
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = Channel::ALL.iter().flat_map(|c| self.channel_queues(*c)).collect();
        queues.extend(self.retry_tiers.iter().map(|d| self.retry_queue(*d)));
        queues.push(self.dead_letter_queue());
        queues.push(self.webhook_queue());
        queues
    }

    pub fn exchanges(&self) -> Vec<String> {
        vec![self.work_exchange(), self.retry_exchange(), self.dead_letter_exchange()]
    }

    /// Arguments shared by every quorum queue Herald declares.
    fn quorum_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert("x-delivery-limit".into(), long(u64::from(self.delivery_limit)));
        args
    }

    /// Arguments of a queue whose rejected or expired messages go to `exchange`, at least once.
    fn dead_lettering_arguments(&self, exchange: &str) -> FieldTable {
        let mut args = self.quorum_arguments();
        args.insert("x-dead-letter-exchange".into(), text(exchange));
        // At-least-once dead-lettering needs reject-publish overflow; it keeps a dead-lettered
        // message in the source queue until the target confirms it, so nothing is lost in between.
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        args
    }

    pub fn channel_queue_arguments(&self) -> FieldTable {
        let mut args = self.dead_lettering_arguments(&self.dead_letter_exchange());
        if let Some(max) = self.max_queue_length {
            args.insert("x-max-length".into(), long(u64::from(max)));
        }
        args
    }

    pub fn retry_queue_arguments(&self, delay: Duration) -> FieldTable {
        let mut args = self.dead_lettering_arguments(&self.work_exchange());
        args.insert("x-message-ttl".into(), long(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)));
        args
    }

    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut args = self.quorum_arguments();
        args.insert("x-overflow".into(), text("reject-publish"));
        args
    }

    /// The arguments binding a tier's queue to the retry exchange on `header`.
    fn tier_binding(header: &str, delay: Duration) -> FieldTable {
        let mut binding = FieldTable::default();
        binding.insert("x-match".into(), text("all"));
        binding.insert(header.into(), text(&Self::tier_name(delay)));
        binding
    }

    /// Declares everything; safe to run any number of times, from any number of processes.
    pub async fn declare(&self, channel: &lapin::Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let queue_options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        for (name, kind) in [
            (self.work_exchange(), ExchangeKind::Direct),
            (self.retry_exchange(), ExchangeKind::Headers),
            (self.dead_letter_exchange(), ExchangeKind::Fanout),
        ] {
            channel.exchange_declare(name.into(), kind, durable, FieldTable::default()).await?;
        }
        for queue_channel in Channel::ALL {
            for shard in 0..self.shards.max(1) {
                let queue = self.shard_queue(queue_channel, shard);
                channel.queue_declare(queue.clone().into(), queue_options, self.channel_queue_arguments()).await?;
                channel
                    .queue_bind(
                        queue.into(),
                        self.work_exchange().into(),
                        Self::shard_routing_key(queue_channel, shard).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
        }
        for delay in &self.retry_tiers {
            let queue = self.retry_queue(*delay);
            channel.queue_declare(queue.clone().into(), queue_options, self.retry_queue_arguments(*delay)).await?;
            // Unbinding a binding that does not exist is a no-op, so this migrates a deployment
            // that still has the legacy binding and costs nothing on one that never had it.
            channel
                .queue_unbind(
                    queue.clone().into(),
                    self.retry_exchange().into(),
                    "".into(),
                    Self::tier_binding(LEGACY_RETRY_TIER, *delay),
                )
                .await?;
            channel
                .queue_bind(
                    queue.into(),
                    self.retry_exchange().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    Self::tier_binding(RETRY_TIER, *delay),
                )
                .await?;
        }
        let webhooks = self.webhook_queue();
        channel.queue_declare(webhooks.clone().into(), queue_options, self.channel_queue_arguments()).await?;
        channel
            .queue_bind(
                webhooks.into(),
                self.work_exchange().into(),
                Self::WEBHOOK_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let dead = self.dead_letter_queue();
        channel.queue_declare(dead.clone().into(), queue_options, self.dead_letter_queue_arguments()).await?;
        channel
            .queue_bind(
                dead.into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let topology = Topology { prefix: "t1".into(), ..Topology::default() };
        assert_eq!(topology.channel_queue(Channel::Sms), "t1.sms");
        assert_eq!(topology.retry_queue(Duration::from_secs(30)), "t1.retry.30s");
        assert_eq!(topology.queues().len(), 3 * 8 + 3 + 1 + 1);
        assert_eq!(topology.webhook_queue(), "t1.webhooks");
    }

    #[test]
    fn shard_zero_is_the_queue_of_releases_before_sharding() {
        let topology = Topology { prefix: "t1".into(), ..Topology::default() };
        assert_eq!(topology.shard_queue(Channel::Sms, 0), "t1.sms");
        assert_eq!(Topology::shard_routing_key(Channel::Sms, 0), "sms");
        assert_eq!(topology.shard_queue(Channel::Sms, 5), "t1.sms.5");
        assert_eq!(Topology::shard_routing_key(Channel::Sms, 5), "sms.5");
        assert_eq!(Topology::channel_of_routing_key("sms.5"), "sms");
        assert_eq!(Topology::channel_of_routing_key("email"), "email");
        let unsharded = Topology { shards: 1, ..topology };
        assert_eq!(unsharded.channel_queues(Channel::Push), vec!["t1.push".to_string()]);
        assert_eq!(unsharded.routing_key_for(Channel::Push, "anything"), "push");
    }

    #[test]
    fn a_sandbox_always_maps_to_the_same_shard_and_sandboxes_spread() {
        let topology = Topology::default();
        // Pinned, so that a change is deliberate: API processes of two releases running side by
        // side should send a sandbox's messages to the same shard.
        assert_eq!((topology.shard_of("a"), topology.shard_of("b"), topology.shard_of("default")), (4, 5, 6));
        let used: std::collections::HashSet<u16> = (0..64).map(|n| topology.shard_of(&format!("tenant-{n}"))).collect();
        assert_eq!(used.len(), 8, "64 sandboxes use every one of 8 shards");
    }

    #[test]
    fn the_tier_header_is_one_rabbitmq_matches_on() {
        // RabbitMQ skips `x-` keys when matching headers bindings: such a binding matches all.
        assert!(!RETRY_TIER.starts_with("x-"));
        let binding = Topology::tier_binding(RETRY_TIER, Duration::from_secs(30));
        let keys: Vec<String> = binding.inner().keys().map(|k| k.to_string()).collect();
        assert_eq!(keys.iter().filter(|k| !k.starts_with("x-")).count(), 1, "{keys:?}");
    }

    #[test]
    fn every_channel_queue_argument_is_explicit() {
        let topology = Topology { max_queue_length: Some(7), ..Topology::default() };
        let args = topology.channel_queue_arguments();
        let keys: Vec<String> = args.inner().keys().map(|k| k.to_string()).collect();
        for expected in [
            "x-queue-type",
            "x-delivery-limit",
            "x-dead-letter-exchange",
            "x-dead-letter-strategy",
            "x-overflow",
            "x-max-length",
        ] {
            assert!(keys.iter().any(|k| k == expected), "{expected} missing from {keys:?}");
        }
    }
}
