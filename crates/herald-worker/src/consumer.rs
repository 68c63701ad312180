//! The delivery loop: one consumer per shard queue of each channel (manual acks, bounded
//! prefetch), a bounded number of a channel's messages in the pipeline at once, shared by its
//! shards in turn, and the only place where messages are settled —
//! acknowledged, republished to a retry tier or to the dead-letter exchange (with a confirm
//! before the ack, so a message is never dropped between two queues).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use herald_core::Channel;
use herald_ingest::topology::{RETRY_TIER_HEADER, Topology};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::pause::PauseState;
use crate::pipeline::{Decision, Pipeline};

/// The header counting the retry tiers a message has been through.
pub const TIERS_USED_HEADER: &str = "x-herald-tiers-used";
pub const DEAD_REASON_HEADER: &str = "x-herald-dead-letter-reason";
pub const LAST_ERROR_HEADER: &str = "x-herald-last-error";

const RECONNECT_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(200))
    .with_max_delay(Duration::from_secs(5))
    .with_jitter()
    .without_max_times();

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
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.to_string()))
}

fn tiers_used(delivery: &Delivery) -> u32 {
    match delivery.properties.headers().as_ref().and_then(|h| h.inner().get(TIERS_USED_HEADER)) {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// Runs the worker until `shutdown` turns true, reconnecting whenever the broker goes away.
pub async fn run(pipeline: Arc<Pipeline>, settings: ConsumerSettings, mut shutdown: watch::Receiver<bool>) {
    let mut delays = RECONNECT_BACKOFF.build();
    while !*shutdown.borrow() {
        let started = std::time::Instant::now();
        match session(&pipeline, &settings, shutdown.clone()).await {
            Ok(()) => return,
            Err(error) => {
                // A session that worked for a while starts the back-off over.
                if started.elapsed() > Duration::from_secs(30) {
                    delays = RECONNECT_BACKOFF.build();
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(%error, retry_in = ?delay, "worker broker session ended");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// Longest wait for connecting to, or closing a connection with, the broker.
const BROKER_STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn connection_closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed))
}

/// One connection's life: declare, consume every channel, settle, and on shutdown drain. If any
/// part ends early (a consumer cancelled, the publisher channel gone), the whole session ends so
/// that the next one reconnects and declares the topology again.
async fn session(
    pipeline: &Arc<Pipeline>,
    settings: &ConsumerSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name("herald-worker".into());
    // Bounded: a starting node may accept the connection and never finish the handshake.
    let connection = tokio::time::timeout(BROKER_STEP_TIMEOUT, Connection::connect(&settings.amqp_url, properties))
        .await
        .map_err(|_| connection_closed())??;
    let setup = connection.create_channel().await?;
    settings.topology.declare(&setup).await?;
    let publisher = connection.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    // Every loop of this session stops when the worker shuts down or when the session fails.
    let (end_session, session_ended) = watch::channel(false);
    let end_session = Arc::new(end_session);
    let forward_shutdown = {
        let (end, mut shutdown) = (Arc::clone(&end_session), shutdown.clone());
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
            end.send_replace(true);
        })
    };
    let settler =
        Arc::new(Settler { publisher, topology: settings.topology.clone(), end_session: Arc::clone(&end_session) });
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
            session_ended.clone(),
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
    loops.spawn(record_dead_letters(Arc::clone(pipeline), dead_consumer, session_ended));
    let mut result = Ok(());
    while let Some(ended) = loops.join_next().await {
        match ended {
            Ok(Err(error)) => result = Err(error),
            _ if !*shutdown.borrow() && result.is_ok() => result = Err(connection_closed()),
            _ => {}
        }
        end_session.send_replace(true);
    }
    forward_shutdown.abort();
    // Closing waits for the broker's close-ok, which a restarting node never sends.
    let _ = tokio::time::timeout(BROKER_STEP_TIMEOUT, connection.close(200, "worker stopping".into())).await;
    result
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
    shutdown: watch::Receiver<bool>,
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
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), lapin::Error> {
    let Shared { channel, queue, pipeline, settler, permits, pause } = shared;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = shutdown.changed() => continue,
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
                _ = shutdown.changed() => break,
            }
        }
        // Waiting for a permit (every slot busy) must not outlast a shutdown: a message taken
        // after SIGTERM would start a provider call the grace period then cuts short. The
        // semaphore is never closed; a closed one would mean the loop is being torn down.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            _ = shutdown.changed() => break,
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
    if let Some(traceparent) = header_text(headers, "traceparent") {
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

fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).to_string()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}

/// Why the broker dead-lettered a message on its own (delivery limit, rejection, expiry).
fn broker_reason(headers: Option<&FieldTable>) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    header_text(Some(latest), "reason").map(|reason| format!("broker-{reason}"))
}

/// Copies the dead-letter queue into the database (listing, filtering, replay), acking each
/// message only once it is recorded.
async fn record_dead_letters(
    pipeline: Arc<Pipeline>,
    mut consumer: lapin::Consumer,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), lapin::Error> {
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = shutdown.changed() => return Ok(()),
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        let delivery = delivery?;
        let headers = delivery.properties.headers().as_ref();
        let reason = header_text(headers, DEAD_REASON_HEADER)
            .or_else(|| broker_reason(headers))
            .unwrap_or_else(|| "unknown".into());
        let message_id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
        let facts = crate::dead_letters::DeadLetterFacts {
            body: &delivery.data,
            message_id: message_id.as_deref(),
            // The channel, not the shard: dead letters are listed and counted by channel.
            routing_key: Topology::channel_of_routing_key(delivery.routing_key.as_str()),
            reason,
            last_error: header_text(headers, LAST_ERROR_HEADER),
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
    end_session: Arc<watch::Sender<bool>>,
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
                    self.end_session.send_replace(true);
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
        headers.insert(RETRY_TIER_HEADER.into(), text(&Topology::tier_name(tier)));
        headers.insert(TIERS_USED_HEADER.into(), AMQPValue::LongLongInt(i64::from(tiers_used)));
        self.publish(self.topology.retry_exchange(), delivery.routing_key.to_string(), delivery, headers).await
    }

    async fn to_dead_letters(&self, delivery: &Delivery, reason: &str, last_error: &str) -> Result<(), RepublishError> {
        let mut headers = Self::headers(delivery);
        headers.insert(DEAD_REASON_HEADER.into(), text(reason));
        headers.insert(LAST_ERROR_HEADER.into(), text(last_error));
        self.publish(self.topology.dead_letter_exchange(), delivery.routing_key.to_string(), delivery, headers).await
    }
}
