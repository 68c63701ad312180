//! The connection to RabbitMQ and the confirmed publisher.
//!
//! [`Broker::run`] owns the connection: it connects with back-off, declares the topology, opens
//! confirm-mode channels, and starts over when the connection breaks, until its token is
//! cancelled. Whoever creates the broker runs it (the process's job set, a test app's). Requests
//! never wait for a reconnect: while there is no healthy session they fail at once (and the API
//! answers 503), because a client retrying against another instance is faster than one waiting
//! on this one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::Channel;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, Event};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reconnect::{self, Reconnect, STEP_TIMEOUT};
use crate::topology::Topology;

/// How often the supervisor double-checks a session it has not heard of.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Longest wait for [`Broker::queue_state`]: a status page must not hang on a slow broker.
pub const QUEUE_STATE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one reading of a queue's state is reused.
pub const QUEUE_STATE_FRESH: Duration = Duration::from_secs(1);

/// A queue as the broker holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Messages ready for delivery (not those a consumer holds unacknowledged).
    pub messages: u32,
    pub consumers: u32,
}

#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub url: String,
    pub topology: Topology,
    /// Confirm-mode channels publishes are spread over.
    pub publish_channels: usize,
    /// A publish not confirmed within this time counts as failed.
    pub confirm_timeout: Duration,
    /// Shown in the broker's connection list.
    pub connection_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("the broker refused the message")]
    Nacked,
    #[error("the broker could not route the message: {0}")]
    Returned(String),
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

/// One message to publish on the work exchange.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub routing_key: String,
    pub message_id: String,
    pub payload: Vec<u8>,
    pub headers: FieldTable,
    pub timestamp_secs: u64,
}

struct Session {
    connection: Connection,
    channels: Vec<lapin::Channel>,
}

struct Inner {
    settings: BrokerSettings,
    session: RwLock<Option<Arc<Session>>>,
    broken: Notify,
    next_channel: AtomicUsize,
    sessions: AtomicUsize,
    /// The last reading of each queue, reused for [`QUEUE_STATE_FRESH`]: a status polled in a
    /// tight loop must not open a broker channel per request.
    queue_states: std::sync::Mutex<HashMap<String, (tokio::time::Instant, Option<QueueState>)>>,
}

/// A handle on the broker; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("connected", &self.is_connected()).finish()
    }
}

impl Broker {
    /// A broker handle that is not connected yet: it connects once [`Broker::run`] runs.
    pub fn new(settings: BrokerSettings) -> Self {
        Broker {
            inner: Arc::new(Inner {
                settings,
                session: RwLock::new(None),
                broken: Notify::new(),
                next_channel: AtomicUsize::new(0),
                sessions: AtomicUsize::new(0),
                queue_states: std::sync::Mutex::default(),
            }),
        }
    }

    /// Waits until connected, or `timeout` passes (for tools that publish once, and tests).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return Err(PublishError::NotConnected);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.settings.topology
    }

    /// How many sessions have been established so far (1 + reconnections).
    pub fn sessions_established(&self) -> usize {
        self.inner.sessions.load(Ordering::SeqCst)
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|session| session.connection.status().connected())
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.inner.session.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        *self.inner.session.write().unwrap_or_else(|p| p.into_inner()) = session;
    }

    async fn connect(&self) -> Result<Session, lapin::Error> {
        let settings = &self.inner.settings;
        let connection = reconnect::connect(&settings.url, &settings.connection_name).await?;
        let setup = connection.create_channel().await?;
        settings.topology.declare(&setup).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let mut channels = Vec::with_capacity(settings.publish_channels.max(1));
        for _ in 0..settings.publish_channels.max(1) {
            let channel = connection.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await?;
            channels.push(channel);
        }
        Ok(Session { connection, channels })
    }

    /// Keeps a session up until `cancel` is cancelled, then closes it.
    pub async fn run(self, cancel: CancellationToken) {
        let mut reconnect = Reconnect::default();
        while !cancel.is_cancelled() {
            let session = tokio::select! {
                session = tokio::time::timeout(STEP_TIMEOUT, self.connect()) => session,
                () = cancel.cancelled() => break,
            };
            let session = match session {
                Ok(Ok(session)) => Arc::new(session),
                failed => {
                    let error = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => format!("no answer within {STEP_TIMEOUT:?}"),
                    };
                    let delay = reconnect.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "broker connection failed");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => {}
                    }
                    continue;
                }
            };
            reconnect.session_started();
            let mut events = session.connection.events_listener();
            self.set_session(Some(session.clone()));
            self.inner.sessions.fetch_add(1, Ordering::SeqCst);
            tracing::info!("broker connected, topology declared");
            let mut check = tokio::time::interval(HEALTH_CHECK_INTERVAL);
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Event::Error(error)) => { tracing::warn!(%error, "broker connection error"); break; }
                        Some(_) => {}
                        None => break,
                    },
                    () = self.inner.broken.notified() => break,
                    () = cancel.cancelled() => break,
                    _ = check.tick() => {
                        if !session.connection.status().connected() || session.channels.iter().any(|c| !c.status().connected()) {
                            break;
                        }
                    }
                }
            }
            self.set_session(None);
            if cancel.is_cancelled() {
                reconnect::close(&session.connection, 200, "stopping").await;
                break;
            }
            tracing::warn!("broker session lost; reconnecting");
            reconnect::close(&session.connection, 320, "reconnecting").await;
        }
    }

    /// What the broker holds for `queue` right now: ready messages and consumers (a passive
    /// declare, on a channel of its own since a failed one closes its channel), within
    /// [`QUEUE_STATE_TIMEOUT`]; `None` while there is no session or the queue does not exist.
    pub async fn queue_state(&self, queue: &str) -> Option<QueueState> {
        let now = tokio::time::Instant::now();
        let cached = |states: &HashMap<String, (tokio::time::Instant, Option<QueueState>)>| {
            states.get(queue).filter(|(at, _)| now.duration_since(*at) < QUEUE_STATE_FRESH).map(|(_, state)| *state)
        };
        if let Some(state) = cached(&self.inner.queue_states.lock().unwrap_or_else(|p| p.into_inner())) {
            return state;
        }
        let state = self.read_queue_state(queue).await;
        let mut states = self.inner.queue_states.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the queues of the topology (the names come from it, not from callers).
        states.insert(queue.to_string(), (tokio::time::Instant::now(), state));
        state
    }

    async fn read_queue_state(&self, queue: &str) -> Option<QueueState> {
        let session = self.current()?;
        let look = async {
            let channel = session.connection.create_channel().await.ok()?;
            let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
            let declared = channel.queue_declare(queue.into(), options, FieldTable::default()).await.ok();
            let _ = channel.close(200, "queue state read".into()).await;
            declared.map(|q| QueueState { messages: q.message_count(), consumers: q.consumer_count() })
        };
        tokio::time::timeout(QUEUE_STATE_TIMEOUT, look).await.ok().flatten()
    }

    /// Reads the state of every channel's queues (every shard) every `every`, for ever, and
    /// hands each to `report` (`None` while the broker cannot say). The owner runs it as a job.
    pub async fn watch_queues<F>(self, every: Duration, report: F)
    where
        F: Fn(Channel, &str, Option<QueueState>) + Send + Sync + 'static,
    {
        // The first reading as soon as there is a session, not one period late.
        while !self.is_connected() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for channel in Channel::ALL {
                for queue in self.topology().channel_queues(channel) {
                    report(channel, &queue, self.queue_state(&queue).await);
                }
            }
        }
    }

    /// Publishes every message (persistent, mandatory) and returns once the broker has
    /// confirmed all of them; any nack, return, timeout or error fails the whole call.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        let session = self.current().ok_or(PublishError::NotConnected)?;
        if !session.connection.status().connected() {
            self.inner.broken.notify_one();
            return Err(PublishError::NotConnected);
        }
        let index = self.inner.next_channel.fetch_add(1, Ordering::Relaxed) % session.channels.len();
        let channel = &session.channels[index];
        let result = self.publish_on(channel, messages).await;
        if let Err(PublishError::Broker(error)) = &result {
            tracing::warn!(%error, "publish failed; the session will be re-established");
            self.inner.broken.notify_one();
        }
        result
    }

    async fn publish_on(&self, channel: &lapin::Channel, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        let exchange = self.inner.settings.topology.work_exchange();
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(message.message_id.clone().into())
                .with_timestamp(message.timestamp_secs)
                .with_app_id("herald".into())
                .with_headers(message.headers.clone());
            let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            confirms.push(
                channel
                    .basic_publish(
                        exchange.clone().into(),
                        message.routing_key.clone().into(),
                        options,
                        &message.payload,
                        properties,
                    )
                    .await?,
            );
        }
        let timeout = self.inner.settings.confirm_timeout;
        for confirm in confirms {
            let confirmation =
                tokio::time::timeout(timeout, confirm).await.map_err(|_| PublishError::Timeout(timeout))??;
            if confirmation.is_nack() {
                return Err(PublishError::Nacked);
            }
            if let Some(returned) = confirmation.take_message() {
                return Err(PublishError::Returned(returned.reply_text.to_string()));
            }
        }
        Ok(())
    }
}
