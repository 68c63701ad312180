//! The delivery loop: one consumer per shard queue of each channel (manual acks, bounded
//! prefetch), a bounded number of a channel's messages in the pipeline at once, shared by its
//! shards in turn, and the only place where messages are settled —
//! acknowledged, republished to a retry tier or to the dead-letter exchange (with a confirm
//! before the ack, so a message is never dropped between two queues).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herald_broker::headers::{self, count, read_count, read_text, text};
use herald_broker::reconnect::{self, Reconnect, connection_closed};
use herald_broker::topology::Topology;
use herald_core::Channel;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::pause::PauseState;
use crate::pipeline::{Decision, Pipeline};
use crate::webhooks::Webhooks;

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub amqp_url: String,
    pub topology: Topology,
    pub channels: Vec<Channel>,
    /// Unacknowledged messages the broker may push to one shard queue's consumer.
    pub prefetch: u16,
    /// Messages of one channel in the pipeline at once.
    pub concurrency: usize,
    /// How long a shutdown waits for in-flight messages.
    pub grace: Duration,
    /// Customer feedback webhooks: this worker relays the outbox and delivers the events.
    pub webhooks: Option<Arc<Webhooks>>,
}

/// Webhook events delivered at once by one worker.
const WEBHOOK_CONCURRENCY: usize = 16;

fn tiers_used(delivery: &Delivery) -> u32 {
    read_count(delivery.properties.headers().as_ref(), headers::TIERS_USED)
}

/// Runs the worker until `stop` is cancelled, reconnecting whenever the broker goes away.
pub async fn run(pipeline: Arc<Pipeline>, settings: ConsumerSettings, stop: CancellationToken) {
    let mut reconnect = Reconnect::default();
    while !stop.is_cancelled() {
        reconnect.session_started();
        match session(&pipeline, &settings, &stop).await {
            Ok(()) => return,
            Err(error) => {
                let delay = reconnect.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "worker broker session ended");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    }
}

/// One connection's life: declare, consume every channel, settle, and on shutdown drain. If any
/// part ends early (a consumer cancelled, the publisher channel gone), the whole session ends so
/// that the next one reconnects and declares the topology again.
async fn session(
    pipeline: &Arc<Pipeline>,
    settings: &ConsumerSettings,
    stop: &CancellationToken,
) -> Result<(), lapin::Error> {
    let connection = reconnect::connect(&settings.amqp_url, "herald-worker").await?;
    let setup = connection.create_channel().await?;
    settings.topology.declare(&setup).await?;
    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    // Every loop of this session stops when the worker stops or when the session fails: a child
    // of the worker's token, cancelled with it or alone.
    let end_session = stop.child_token();
    let settler =
        Arc::new(Settler { publisher, topology: settings.topology.clone(), end_session: end_session.clone() });
    tracing::info!(channels = ?settings.channels, "worker consuming");
    let mut loops = tokio::task::JoinSet::new();
    for channel in &settings.channels {
        let amqp = connection.create_channel().await?;
        // Not global: every consumer of this AMQP channel (one per shard) gets its own prefetch,
        // so a full shard cannot use up the window of an empty one.
        amqp.basic_qos(settings.prefetch, BasicQosOptions::default()).await?;
        let mut consumers = Vec::new();
        for queue in settings.topology.channel_queues(*channel) {
            let consumer = amqp
                .basic_consume(
                    queue.clone().into(),
                    format!("herald-worker-{queue}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push((queue, consumer));
        }
        loops.spawn(consume_channel(
            *channel,
            Arc::clone(pipeline),
            Arc::clone(&settler),
            consumers,
            settings.clone(),
            end_session.clone(),
        ));
    }
    let dead = connection.create_channel().await?;
    dead.basic_qos(50, BasicQosOptions::default()).await?;
    let dead_consumer = dead
        .basic_consume(
            settings.topology.dead_letter_queue().into(),
            "herald-dead-letters".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loops.spawn(record_dead_letters(Arc::clone(pipeline), dead_consumer, end_session.clone()));
    if let Some(webhooks) = &settings.webhooks {
        let amqp = connection.create_channel().await?;
        amqp.basic_qos(u16::try_from(WEBHOOK_CONCURRENCY * 2).unwrap_or(32), BasicQosOptions::default()).await?;
        let consumer = amqp
            .basic_consume(
                settings.topology.webhook_queue().into(),
                "herald-webhooks".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let first_tier = pipeline.first_tier();
        loops.spawn(deliver_webhooks(
            Arc::clone(webhooks),
            Arc::clone(&settler),
            consumer,
            first_tier,
            end_session.clone(),
        ));
        let relay = connection.create_channel().await?;
        relay.confirm_select(ConfirmSelectOptions::default()).await?;
        loops.spawn(relay_webhooks(
            Arc::clone(webhooks),
            relay,
            settings.topology.work_exchange(),
            end_session.clone(),
        ));
    }
    let mut result = Ok(());
    while let Some(ended) = loops.join_next().await {
        match ended {
            Ok(Err(error)) => result = Err(error),
            _ if !stop.is_cancelled() && result.is_ok() => result = Err(connection_closed()),
            _ => {}
        }
        end_session.cancel();
    }
    reconnect::close(&connection, 200, "worker stopping").await;
    result
}

/// Delivers webhook events, a few at once, each settled like a message (ack, retry tier, dead letter).
async fn deliver_webhooks(
    webhooks: Arc<Webhooks>,
    settler: Arc<Settler>,
    mut consumer: lapin::Consumer,
    first_tier: Duration,
    shutdown: CancellationToken,
) -> Result<(), lapin::Error> {
    let permits = Arc::new(Semaphore::new(WEBHOOK_CONCURRENCY));
    // Owned here: a session that ends aborts what it started, after a short grace.
    let mut inflight = tokio::task::JoinSet::new();
    let ended = loop {
        while inflight.try_join_next().is_some() {}
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = shutdown.cancelled() => break Ok(()),
        };
        let Some(delivery) = delivery else { break Err(connection_closed()) };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error) => break Err(error),
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break Ok(()) };
        let (webhooks, settler) = (Arc::clone(&webhooks), Arc::clone(&settler));
        inflight.spawn(async move {
            let event_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
            let decision = webhooks.deliver(&delivery.data, event_id.as_deref(), tiers_used(&delivery)).await;
            settler.settle(&delivery, decision, first_tier).await;
            drop(permit);
        });
    };
    let drained = async { while inflight.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drained).await.is_err() {
        tracing::warn!("webhook deliveries still in flight at shutdown; the broker redelivers them");
    }
    ended
}

/// Moves the webhook outbox onto the broker: at once while there is a backlog, else every 200 ms.
async fn relay_webhooks(
    webhooks: Arc<Webhooks>,
    publisher: lapin::Channel,
    exchange: String,
    shutdown: CancellationToken,
) -> Result<(), lapin::Error> {
    loop {
        let pause = match webhooks.relay(&publisher, &exchange).await {
            Ok(0) => Duration::from_millis(200),
            Ok(_) => Duration::ZERO,
            Err(error) => {
                tracing::warn!(%error, "webhook outbox: not relayed this time; the events stay in the outbox");
                Duration::from_secs(1)
            }
        };
        if !publisher.status().connected() {
            return Err(connection_closed());
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Consumes every shard queue of `channel`. They share the channel's concurrency and pause. The
/// semaphore is fair (first come, first served) and each shard's loop waits for one permit at a
/// time, so permits go to the shards that have messages in turn: a message in a quiet shard
/// waits for at most one permit per busy shard, however deep their queues.
async fn consume_channel(
    channel: Channel,
    pipeline: Arc<Pipeline>,
    settler: Arc<Settler>,
    consumers: Vec<(String, lapin::Consumer)>,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
) -> Result<(), lapin::Error> {
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let pause = Arc::new(PauseState::default());
    let mut loops = tokio::task::JoinSet::new();
    for (queue, consumer) in consumers {
        let shared = Shared {
            channel,
            queue,
            pipeline: Arc::clone(&pipeline),
            settler: Arc::clone(&settler),
            permits: Arc::clone(&permits),
            pause: Arc::clone(&pause),
        };
        loops.spawn(consume(shared, consumer, shutdown.clone()));
    }
    while let Some(ended) = loops.join_next().await {
        match ended {
            Ok(Ok(())) => {}
            // One shard's consumer gone ends the session (dropping the others), which reconnects.
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(connection_closed()),
        }
    }
    // Shutdown: stop taking messages, let the in-flight ones finish within the grace period.
    // Anything prefetched but not started is returned to the queue when the channel closes.
    let all = u32::try_from(settings.concurrency.max(1)).unwrap_or(u32::MAX);
    if tokio::time::timeout(settings.grace, permits.acquire_many(all)).await.is_err() {
        tracing::warn!("shutdown grace elapsed with messages in flight; they will be redelivered");
    }
    Ok(())
}

/// What the loops of one channel's shards share.
struct Shared {
    channel: Channel,
    queue: String,
    pipeline: Arc<Pipeline>,
    settler: Arc<Settler>,
    permits: Arc<Semaphore>,
    pause: Arc<PauseState>,
}

async fn consume(
    shared: Shared,
    mut consumer: lapin::Consumer,
    shutdown: CancellationToken,
) -> Result<(), lapin::Error> {
    let Shared { channel, queue, pipeline, settler, permits, pause } = shared;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = shutdown.cancelled() => break,
        };
        let Some(delivery) = delivery else {
            return Err(connection_closed());
        };
        let delivery = delivery?;
        crate::observe::consumed(pipeline.metrics(), channel);
        // A paused channel holds the message (unacknowledged) until the pause is over; on
        // shutdown it goes back to the queue with the channel.
        if let Some(until) = pause.until(tokio::time::Instant::now()) {
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = shutdown.cancelled() => break,
            }
        }
        // Waiting for a permit (every slot busy) must not outlast a shutdown: a message taken
        // after SIGTERM would start a provider call the grace period then cuts short. The
        // semaphore is never closed; a closed one would mean the loop is being torn down.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = permit else {
            break;
        };
        let (pipeline, settler, pause) = (Arc::clone(&pipeline), Arc::clone(&settler), Arc::clone(&pause));
        let span = process_span(&queue, &delivery);
        tokio::spawn(
            async move {
                let decision =
                    pipeline.process_delivery(&delivery.data, tiers_used(&delivery), delivery.redelivered).await;
                let now = tokio::time::Instant::now();
                if let Decision::Pause { pause: wait, reason } = &decision {
                    if let Some(wait) = pause.start(*wait, now) {
                        tracing::warn!(%reason, pause = ?wait, "channel paused");
                        crate::observe::paused(pipeline.metrics(), channel, Some(reason));
                    }
                } else if pause.resume(now) {
                    crate::observe::paused(pipeline.metrics(), channel, None);
                }
                settler.settle(&delivery, decision, pipeline.first_tier()).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    Ok(())
}

/// The consumer span of one message, a child of the span that published it (its `traceparent`
/// header), following OpenTelemetry's messaging conventions.
fn process_span(queue: &str, delivery: &Delivery) -> tracing::Span {
    let headers = delivery.properties.headers().as_ref();
    let message_id = delivery.properties.message_id().as_ref().map(ToString::to_string).unwrap_or_default();
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.message.id = %message_id,
        herald.execution_id = tracing::field::Empty,
        herald.campaign_id = tracing::field::Empty,
    );
    if let Some(traceparent) = read_text(headers, headers::TRACEPARENT) {
        herald_telemetry::trace::set_remote_parent(&span, &traceparent);
    }
    span
}

#[derive(Debug, thiserror::Error)]
enum RepublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// Nacked or returned by the broker.
    #[error("the broker refused the republished message")]
    Refused,
}

/// Copies the dead-letter queue into the database (listing, filtering, replay), acking each
/// message only once it is recorded.
async fn record_dead_letters(
    pipeline: Arc<Pipeline>,
    mut consumer: lapin::Consumer,
    shutdown: CancellationToken,
) -> Result<(), lapin::Error> {
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = shutdown.cancelled() => return Ok(()),
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        let delivery = delivery?;
        let headers = delivery.properties.headers().as_ref();
        let reason = read_text(headers, headers::DEAD_REASON)
            .or_else(|| headers::broker_reason(headers))
            .unwrap_or_else(|| "unknown".into());
        let message_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
        let facts = crate::dead_letters::DeadLetterFacts {
            body: &delivery.data,
            message_id: message_id.as_deref(),
            // The channel, not the shard: dead letters are listed and counted by channel.
            routing_key: Topology::channel_of_routing_key(delivery.routing_key.as_str()),
            reason,
            last_error: read_text(headers, headers::LAST_ERROR),
        };
        match pipeline.record_dead_letter(facts).await {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(error) => {
                tracing::warn!(%error, "could not record a dead letter; it stays in the queue");
                delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Applies decisions to deliveries. Republishes are confirmed before the original is acked.
struct Settler {
    publisher: lapin::Channel,
    topology: Topology,
    /// Ends the session when the publisher channel is gone: nacked messages would otherwise come
    /// straight back and fail to republish again, in a loop.
    end_session: CancellationToken,
}

impl Settler {
    async fn settle(&self, delivery: &Delivery, decision: Decision, first_tier: Duration) {
        let republished = match decision {
            Decision::Ack => Ok(()),
            Decision::Retry { tier, tiers_used } => self.to_retry_tier(delivery, tier, tiers_used).await,
            // Put back without counting a tier: the message is not at fault.
            Decision::Pause { .. } => self.to_retry_tier(delivery, first_tier, tiers_used(delivery)).await,
            Decision::DeadLetter { reason, last_error } => self.to_dead_letters(delivery, &reason, &last_error).await,
        };
        let settled = match republished {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await,
            Err(error) => {
                tracing::warn!(%error, "republish failed; returning the message to its queue");
                if matches!(error, RepublishError::Broker(_)) {
                    self.end_session.cancel();
                }
                delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
            }
        };
        if let Err(error) = settled {
            // The channel is gone: the broker redelivers the message, and its delivery row
            // makes the redelivery safe.
            tracing::warn!(%error, "could not settle a delivery");
        }
    }

    fn properties(delivery: &Delivery, headers: FieldTable) -> BasicProperties {
        let mut properties = delivery.properties.clone().with_delivery_mode(2).with_headers(headers);
        if properties.content_type().is_none() {
            properties = properties.with_content_type("application/json".into());
        }
        properties
    }

    fn headers(delivery: &Delivery) -> FieldTable {
        delivery.properties.headers().clone().unwrap_or_default()
    }

    async fn publish(
        &self,
        exchange: String,
        routing_key: String,
        delivery: &Delivery,
        headers: FieldTable,
    ) -> Result<(), RepublishError> {
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &delivery.data,
                Self::properties(delivery, headers),
            )
            .await?
            .await?;
        if confirm.is_nack() || confirm.take_message().is_some() {
            return Err(RepublishError::Refused);
        }
        Ok(())
    }

    async fn to_retry_tier(&self, delivery: &Delivery, tier: Duration, tiers_used: u32) -> Result<(), RepublishError> {
        let mut headers = Self::headers(delivery);
        headers.insert(headers::RETRY_TIER.into(), text(&Topology::tier_name(tier)));
        headers.insert(headers::TIERS_USED.into(), count(u64::from(tiers_used)));
        self.publish(self.topology.retry_exchange(), delivery.routing_key.to_string(), delivery, headers).await
    }

    async fn to_dead_letters(&self, delivery: &Delivery, reason: &str, last_error: &str) -> Result<(), RepublishError> {
        let mut headers = Self::headers(delivery);
        headers.insert(headers::DEAD_REASON.into(), text(reason));
        headers.insert(headers::LAST_ERROR.into(), text(last_error));
        self.publish(self.topology.dead_letter_exchange(), delivery.routing_key.to_string(), delivery, headers).await
    }
}
