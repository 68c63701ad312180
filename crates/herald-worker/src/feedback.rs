//! SES feedback pulled from SQS: the configuration set's SNS topic fans out to a queue, and this
//! loop long-polls it, records each event (herald-store `record_feedback`, once per event), and
//! deletes a message only after its record is committed. A message that cannot be read is left
//! alone: it comes back after the queue's visibility timeout, and the queue's own redrive policy
//! moves it to its dead-letter queue after `maxReceiveCount` receipts. Its body is never logged
//! (it holds recipient addresses).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use herald_core::Clock;
use herald_core::feedback::{FeedbackEvent, parse_ses_event, sns::ses_event_of};
use herald_store::{FeedbackOutcome, Store};
use herald_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

/// Where the SQS consumer reads and what it needs.
#[derive(Debug, Clone)]
pub struct SqsFeedbackSettings {
    pub queue_url: String,
    /// Seconds a receive waits for messages (SQS allows 0 to 20).
    pub wait_seconds: i32,
    /// How long event identities are kept to recognise duplicates.
    pub retention: chrono::Duration,
    /// Receive loops at once (each records on its own connection): one records several hundred
    /// events a second (`cargo bench -p herald-tests --bench feedback`).
    pub pollers: usize,
}

/// What one receipt held: the events to record and the receipt handles to delete once they are.
#[derive(Debug, Default)]
struct Received {
    events: Vec<FeedbackEvent>,
    handles_of_events: Vec<String>,
    /// Read and not tracked (Open, Click): deleted at once.
    ignored: Vec<String>,
}

const SOURCE: &str = "sqs";

/// Long-polls the queue until `stop` is cancelled.
#[derive(Debug)]
pub struct SqsFeedback {
    client: aws_sdk_sqs::Client,
    store: Store,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: SqsFeedbackSettings,
}

impl SqsFeedback {
    pub fn new(
        config: &aws_config::SdkConfig,
        store: Store,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: SqsFeedbackSettings,
    ) -> Self {
        // The worker's AWS configuration bounds each call by the provider timeout; a long poll
        // needs longer.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(Duration::from_secs(u64::try_from(settings.wait_seconds).unwrap_or(20) + 10))
            .operation_timeout(Duration::from_secs(u64::try_from(settings.wait_seconds).unwrap_or(20) + 15))
            .connect_timeout(Duration::from_secs(5))
            .build();
        let config = aws_sdk_sqs::config::Builder::from(config).timeout_config(timeouts).build();
        Self { client: aws_sdk_sqs::Client::from_conf(config), store, clock, metrics, settings }
    }

    /// Runs `pollers` receive loops until `stop` is cancelled (they stop with it: owned here).
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(pollers = self.settings.pollers, "taking in SES feedback from SQS");
        let this = Arc::new(self);
        let mut loops = tokio::task::JoinSet::new();
        for poller in 0..this.settings.pollers.max(1) {
            loops.spawn(Arc::clone(&this).poll(poller == 0, stop.clone()));
        }
        while loops.join_next().await.is_some() {}
    }

    /// One receive loop; the first also purges old event identities, hourly.
    async fn poll(self: Arc<Self>, purges: bool, stop: CancellationToken) {
        let mut pause = Duration::from_millis(500);
        let mut next_purge = tokio::time::Instant::now();
        loop {
            if purges && tokio::time::Instant::now() >= next_purge {
                next_purge += Duration::from_secs(3600);
                if let Err(error) = self.store.purge_feedback_events(self.clock.now() - self.settings.retention).await {
                    tracing::warn!(%error, "could not purge old feedback event identities");
                }
            }
            let round = tokio::select! {
                () = stop.cancelled() => return,
                round = self.round() => round,
            };
            match round {
                Ok(()) => pause = Duration::from_millis(500),
                Err(why) => {
                    tracing::warn!(error = %why, retry_in = ?pause, "SES feedback from SQS failed; anything received and not deleted comes back after the queue's visibility timeout");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One receive, record, delete.
    async fn round(&self) -> Result<(), String> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.settings.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(self.settings.wait_seconds)
            .send()
            .await
            .map_err(|error| format!("receiving: {}", herald_telemetry::redact::redact(&error_text(&error))))?;
        let mut batch = Received::default();
        for message in received.messages() {
            let (Some(handle), Some(body)) = (message.receipt_handle(), message.body()) else { continue };
            match ses_event_of(body).and_then(|event| parse_ses_event(&event)) {
                Ok(Some(event)) => {
                    batch.events.push(event);
                    batch.handles_of_events.push(handle.to_string());
                }
                Ok(None) => {
                    self.metrics.feedback(SOURCE, "other", "ignored");
                    batch.ignored.push(handle.to_string());
                }
                Err(why) => {
                    self.metrics.feedback(SOURCE, "unreadable", "invalid");
                    // Not the body: it holds addresses. The queue's redrive policy takes it away.
                    tracing::warn!(sqs_message_id = message.message_id().unwrap_or_default(), bytes = body.len(),
                        error = %why.kind(), "an SQS feedback message is not an SES event; left for the queue's dead-letter queue");
                }
            }
        }
        if !batch.events.is_empty() {
            let outcomes = self
                .store
                .record_feedback(&batch.events, self.clock.now())
                .await
                .map_err(|error| format!("recording: {error}"))?;
            for (event, outcome) in batch.events.iter().zip(&outcomes) {
                count(&self.metrics, SOURCE, event, *outcome);
            }
        }
        let handles: Vec<String> = batch.handles_of_events.into_iter().chain(batch.ignored).collect();
        self.delete(&handles).await
    }

    async fn delete(&self, handles: &[String]) -> Result<(), String> {
        if handles.is_empty() {
            return Ok(());
        }
        let entries = handles
            .iter()
            .enumerate()
            .map(|(index, handle)| {
                DeleteMessageBatchRequestEntry::builder().id(index.to_string()).receipt_handle(handle).build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("building the delete: {error}"))?;
        let deleted = self
            .client
            .delete_message_batch()
            .queue_url(&self.settings.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|error| format!("deleting: {}", herald_telemetry::redact::redact(&error_text(&error))))?;
        // Recorded already: one that comes back is a duplicate and counts nothing.
        for failed in deleted.failed() {
            tracing::warn!(
                code = failed.code(),
                "an SQS feedback message was recorded but not deleted; its copy will count nothing"
            );
        }
        Ok(())
    }
}

/// The metric and, for an unmatched event, the log line of one recorded event.
fn count(metrics: &Metrics, source: &'static str, event: &FeedbackEvent, outcome: FeedbackOutcome) {
    if outcome == FeedbackOutcome::Unmatched {
        // The SES message id is not personal data; it lets an operator find the mail in SES.
        tracing::info!(event = event.event_type, ses_message_id = %event.message_id,
            "an SES event about a message Herald has no delivery for; counted, nothing else");
    }
    metrics.feedback(source, event.event_type, outcome.as_str());
}

/// The SDK error with its source chain (the service's code and message, or the transport's).
fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
