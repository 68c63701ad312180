//! Message providers: what the worker hands a rendered message to. [`aws::AwsProvider`] sends
//! through SES v2 and SNS; [`fake::ScriptedProvider`] answers from a script, for fault-injection
//! tests and benchmarks. Each provider family classifies its own errors (`classify.rs`).

pub mod aws;
pub mod classify;
pub mod fake;
pub mod outbox;
pub mod transmit;

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use herald_core::Channel;
use herald_core::delivery::ProviderError;

/// Where a provider learns what became of a message after accepting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackSource {
    /// SES event publishing: the configuration set's SNS topic, pulled from SQS
    /// (`crate::feedback`) or pushed to `POST /feedback/sns`.
    SesEvents,
    /// Only the send's own answer: the error code in [`ChannelBinding::opted_out_code`].
    SendErrors,
    None,
}

/// Everything a provider declares about one channel it sends on, in one place: the operation a
/// send is in traces, how its failures are classified, where its feedback comes from, and which
/// of its error codes means the recipient opted out (suppressed from then on).
#[derive(Debug, Clone, Copy)]
pub struct ChannelBinding {
    pub channel: Channel,
    pub operation: Operation,
    pub classify: fn(&classify::Failure<'_>) -> ProviderError,
    pub feedback: FeedbackSource,
    pub opted_out_code: Option<&'static str>,
}

impl ChannelBinding {
    /// Whether `code` (as classified, `Exception` suffix or not) says the recipient opted out.
    pub fn opted_out(&self, code: &str) -> bool {
        self.opted_out_code.is_some_and(|opted| code.strip_suffix("Exception").unwrap_or(code) == opted)
    }
}

/// How a provider call shows in a trace (OpenTelemetry's RPC conventions): `rpc.system`,
/// `rpc.service`, `rpc.method`. Each provider names its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub system: &'static str,
    pub service: &'static str,
    pub method: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailMessage {
    /// `Name <address>` or a bare address.
    pub from: String,
    pub reply_to: Option<String>,
    pub to: String,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    /// Tags the provider attaches to the message (name, value), e.g. the execution id.
    pub tags: Vec<(String, String)>,
    /// The SES configuration set whose event destinations get this message's events.
    pub configuration_set: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsMessage {
    /// E.164.
    pub to: String,
    pub body: String,
    pub sender_id: Option<String>,
    pub origination_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub title: Option<String>,
    pub body: String,
    pub data: BTreeMap<String, String>,
}

/// The provider's id for an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub provider_message_id: String,
}

pub type ProviderResult<T> = Result<T, ProviderError>;

/// Sends rendered messages. Implementations classify every failure.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Whether the provider opens the current task's [`transmit::TransmitGate`] itself, just
    /// before a request leaves the process. Providers that do not are gated by the worker just
    /// before the call.
    fn gates_transmission(&self) -> bool {
        false
    }

    /// What this provider declares for `channel` (see [`ChannelBinding`]).
    fn binding(&self, channel: Channel) -> ChannelBinding {
        ChannelBinding {
            channel,
            operation: Operation { system: "herald", service: "provider", method: channel.as_str() },
            classify: classify::generic,
            feedback: FeedbackSource::None,
            opted_out_code: None,
        }
    }

    fn send_email<'a>(&'a self, message: &'a EmailMessage) -> BoxFuture<'a, ProviderResult<Receipt>>;
    fn send_sms<'a>(&'a self, message: &'a SmsMessage) -> BoxFuture<'a, ProviderResult<Receipt>>;
    /// Registers `token` with the platform application; returns the endpoint to publish to.
    fn create_push_endpoint<'a>(
        &'a self,
        application_arn: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, ProviderResult<String>>;
    fn send_push<'a>(
        &'a self,
        endpoint_arn: &'a str,
        message: &'a PushMessage,
    ) -> BoxFuture<'a, ProviderResult<Receipt>>;
}
