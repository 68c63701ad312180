//! The execution request (AJO's `POST /im/executions/unitary` body), its validation against the
//! campaign, and the message envelope each accepted recipient becomes.
//!
//! Validation is stricter than AJO's on purpose: a context attribute that the live content uses
//! without a `default` must be present, because AJO's silent empty string is exactly the
//! "202 but the email said `Hi ,`" failure our users complain about.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::address::{is_valid_e164, is_valid_email};
use crate::campaign::{Channel, FieldError};

pub const MAX_RECIPIENTS: usize = 20;
/// AJO's cap on the context of one recipient, serialized.
pub const MAX_CONTEXT_BYTES: usize = 200 * 1024;
pub const MAX_IDENTIFIER_LENGTH: usize = 256;
/// The version of [`Envelope`]'s JSON; a worker refuses versions it does not know.
pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientType {
    /// Looked up as a profile by namespace and user id.
    Aep,
    /// No profile: the user id is the address itself.
    External,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile_phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_platform: Option<String>,
}

impl ChannelData {
    /// The address this `channelData` gives for `channel`: the one definition ingest (the status
    /// summary), the validation and the worker (the send) all read.
    pub fn address(&self, channel: Channel) -> Option<&str> {
        match channel {
            Channel::Email => self.email_address.as_deref(),
            Channel::Sms => self.mobile_phone_number.as_deref(),
            Channel::Push => self.push_token.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecipientRequest {
    #[serde(rename = "type")]
    pub kind: RecipientType,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_data: Option<ChannelData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionRequest {
    pub request_id: String,
    pub campaign_id: String,
    pub recipients: Vec<RecipientRequest>,
    /// Request-level context, merged under each recipient's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
}

/// What validation needs to know of the campaign's live version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignFacts {
    pub channel: Channel,
    pub identity_namespace: Option<String>,
    /// `context` attributes the live content reads without a guard.
    pub required_context: BTreeSet<String>,
}

/// A recipient that passed validation, context merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    #[serde(rename = "type")]
    pub kind: RecipientType,
    pub user_id: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_data: Option<ChannelData>,
}

/// Where an accepted request stands: its id is claimed while its messages are being published,
/// and accepted once the broker confirmed them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionState {
    Accepting,
    Accepted,
}

impl ExecutionState {
    pub const ALL: [ExecutionState; 2] = [ExecutionState::Accepting, ExecutionState::Accepted];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Accepting => "accepting",
            ExecutionState::Accepted => "accepted",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

/// One message on the queue: everything a worker needs to send to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub version: u32,
    pub execution_id: Uuid,
    pub request_id: String,
    pub campaign_id: Uuid,
    pub sandbox: String,
    pub channel: Channel,
    /// Position of the recipient in the request; with the execution id, the delivery's identity.
    pub recipient_index: u32,
    pub recipient: Recipient,
    pub context: Map<String, Value>,
    pub profile: Map<String, Value>,
    pub accepted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Envelope {
    /// The AMQP message id: stable across republishes of the same delivery.
    pub fn message_id(&self) -> String {
        format!("{}/{}", self.execution_id, self.recipient_index)
    }
}

/// A validated recipient ready to become an [`Envelope`].
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRecipient {
    pub recipient: Recipient,
    pub context: Map<String, Value>,
    pub profile: Map<String, Value>,
}

fn error(pointer: String, detail: impl Into<String>) -> FieldError {
    FieldError { pointer, detail: detail.into() }
}

/// The address a recipient will be sent to, when the request itself names one.
fn request_address(recipient: &RecipientRequest, channel: Channel) -> Option<&str> {
    let override_address = recipient.channel_data.as_ref().and_then(|d| d.address(channel));
    match recipient.kind {
        RecipientType::External => override_address.or(Some(recipient.user_id.as_str())),
        RecipientType::Aep => override_address,
    }
}

fn check_channel_data(data: &ChannelData, at: &str, errors: &mut Vec<FieldError>) {
    if data.email_address.as_deref().is_some_and(|a| !is_valid_email(a)) {
        errors.push(error(format!("{at}/channelData/emailAddress"), "not an email address"));
    }
    if data.mobile_phone_number.as_deref().is_some_and(|n| !is_valid_e164(n)) {
        errors.push(error(format!("{at}/channelData/mobilePhoneNumber"), "not an E.164 phone number"));
    }
    if data.push_token.as_deref().is_some_and(|t| t.trim().is_empty() || t.len() > 4096) {
        errors.push(error(format!("{at}/channelData/pushToken"), "must be 1 to 4096 bytes"));
    }
}

fn check_address(recipient: &RecipientRequest, channel: Channel, at: &str, errors: &mut Vec<FieldError>) {
    let Some(address) = request_address(recipient, channel) else {
        return;
    };
    let (valid, what) = match channel {
        Channel::Email => (is_valid_email(address), "an email address"),
        Channel::Sms => (is_valid_e164(address), "an E.164 phone number"),
        Channel::Push => (!address.trim().is_empty(), "a push token"),
    };
    if !valid {
        errors.push(error(
            format!("{at}/userId"),
            format!("an external recipient's user id (or channelData) must be {what}"),
        ));
    }
    let platform = recipient.channel_data.as_ref().and_then(|d| d.push_platform.as_deref());
    if channel == Channel::Push && recipient.kind == RecipientType::External && platform.is_none_or(str::is_empty) {
        errors.push(error(format!("{at}/channelData/pushPlatform"), "an external push recipient needs its platform"));
    }
}

/// Validates `request` against the campaign and merges contexts. Every problem is reported.
pub fn prepare(
    request: &ExecutionRequest,
    campaign: &CampaignFacts,
) -> Result<Vec<PreparedRecipient>, Vec<FieldError>> {
    let mut errors = Vec::new();
    if request.request_id.trim().is_empty() || request.request_id.len() > MAX_IDENTIFIER_LENGTH {
        errors.push(error("/requestId".into(), format!("must be 1 to {MAX_IDENTIFIER_LENGTH} bytes")));
    }
    if request.recipients.is_empty() || request.recipients.len() > MAX_RECIPIENTS {
        errors.push(error("/recipients".into(), format!("must hold 1 to {MAX_RECIPIENTS} recipients")));
    }
    if request.context.as_ref().is_some_and(|c| c.contains_key("system")) {
        errors.push(error("/context/system".into(), "`context.system` is reserved"));
    }
    let mut seen = HashSet::new();
    let mut prepared = Vec::with_capacity(request.recipients.len());
    for (index, recipient) in request.recipients.iter().enumerate() {
        let at = format!("/recipients/{index}");
        if recipient.user_id.is_empty() || recipient.user_id.len() > MAX_IDENTIFIER_LENGTH {
            errors.push(error(format!("{at}/userId"), format!("must be 1 to {MAX_IDENTIFIER_LENGTH} bytes")));
        } else if !seen.insert(recipient.user_id.as_str()) {
            errors.push(error(format!("{at}/userId"), "duplicate user id in this request"));
        }
        if let Some(data) = &recipient.channel_data {
            check_channel_data(data, &at, &mut errors);
        }
        check_address(recipient, campaign.channel, &at, &mut errors);
        let namespace = recipient.namespace.clone().or_else(|| campaign.identity_namespace.clone()).unwrap_or_default();
        if recipient.kind == RecipientType::Aep && namespace.is_empty() {
            errors.push(error(format!("{at}/namespace"), "an aep recipient needs a namespace"));
        }
        let mut context = request.context.clone().unwrap_or_default();
        context.extend(recipient.context.clone().unwrap_or_default());
        if recipient.context.as_ref().is_some_and(|c| c.contains_key("system")) {
            errors.push(error(format!("{at}/context/system"), "`context.system` is reserved"));
        }
        let size = serde_json::to_vec(&context).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_CONTEXT_BYTES {
            errors.push(error(
                format!("{at}/context"),
                format!("context is {size} bytes; the limit is {MAX_CONTEXT_BYTES}"),
            ));
        }
        let missing: Vec<&str> =
            campaign.required_context.iter().filter(|key| !context.contains_key(*key)).map(String::as_str).collect();
        if !missing.is_empty() {
            errors.push(error(
                format!("{at}/context"),
                format!(
                    "recipient `{}` lacks context attributes the campaign uses: {}",
                    recipient.user_id,
                    missing.join(", ")
                ),
            ));
        }
        prepared.push(PreparedRecipient {
            recipient: Recipient {
                kind: recipient.kind,
                user_id: recipient.user_id.clone(),
                namespace,
                channel_data: recipient.channel_data.clone(),
            },
            context,
            profile: recipient.profile.clone().unwrap_or_default(),
        });
    }
    if errors.is_empty() { Ok(prepared) } else { Err(errors) }
}

/// JSON with object keys sorted at every level: equal documents give equal bytes, whatever the
/// key order the client used. Idempotency compares request bodies through this.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
