//! A provider that answers from a script: for fault-injection tests (throttling, 5xx, permanent
//! and account-wide errors in a chosen order) and for benchmarks without AWS's latency.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_core::delivery::ProviderError;

use super::{EmailMessage, Provider, ProviderResult, PushMessage, Receipt, SmsMessage};

/// One recorded call: the channel and the recipient it was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub channel: &'static str,
    pub to: String,
    pub body: String,
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
pub struct ScriptedProvider {
    /// Answers in order; when empty, every call succeeds.
    script: Mutex<VecDeque<Result<(), ProviderError>>>,
    calls: Mutex<Vec<Call>>,
    sequence: AtomicU64,
    /// Simulated provider latency.
    pub latency: Duration,
    /// Record calls (off for benchmarks, where the list would only grow).
    pub record: bool,
}

impl ScriptedProvider {
    pub fn new() -> Self {
        Self { record: true, ..Self::default() }
    }

    /// A recording provider that takes `latency` per call.
    pub fn with_latency(latency: Duration) -> Self {
        Self { record: true, latency, ..Self::default() }
    }

    /// A provider that answers at once and keeps no call list (benchmarks).
    pub fn silent() -> Self {
        Self::default()
    }

    /// Queues answers for the next calls, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Result<(), ProviderError>>) {
        self.script.lock().unwrap_or_else(|p| p.into_inner()).extend(answers);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn call_count(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    async fn answer(&self, channel: &'static str, to: &str, body: &str) -> ProviderResult<Receipt> {
        let n = self.sequence.fetch_add(1, Ordering::SeqCst);
        if self.record {
            self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(Call {
                channel,
                to: to.to_string(),
                body: body.to_string(),
                at: std::time::Instant::now(),
            });
        }
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let scripted = self.script.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        match scripted {
            Some(Err(error)) => Err(error),
            _ => Ok(Receipt { provider_message_id: format!("fake-{n}") }),
        }
    }
}

impl Provider for ScriptedProvider {
    fn send_email<'a>(&'a self, message: &'a EmailMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.answer(
            "email",
            &message.to,
            message.text.as_deref().or(message.html.as_deref()).unwrap_or_default(),
        ))
    }

    fn send_sms<'a>(&'a self, message: &'a SmsMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.answer("sms", &message.to, &message.body))
    }

    fn create_push_endpoint<'a>(
        &'a self,
        application_arn: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move { Ok(format!("{application_arn}/endpoint/{token}")) })
    }

    fn send_push<'a>(
        &'a self,
        endpoint_arn: &'a str,
        message: &'a PushMessage,
    ) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.answer("push", endpoint_arn, &message.body))
    }
}
