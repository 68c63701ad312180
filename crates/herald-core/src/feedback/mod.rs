//! What happens after the send: the provider's feedback about a message (SES event publishing:
//! Delivery, Bounce, Complaint, DeliveryDelay, Reject, RenderingFailure, Send), read from the JSON
//! SES publishes, and the suppression rules it feeds. Pure: the SQS consumer and the SNS push
//! endpoint hand bodies in, the store records what comes out.
//!
//! SNS and SQS deliver at least once, so every event has a [`FeedbackEvent::key`] derived from
//! what identifies it at SES (message id, event type, recipients, the event's own id or time):
//! the same event arriving twice has the same key, and is recorded once.

pub mod sns;
pub mod ssrf;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Channel;

/// What a delivery became after the provider accepted it. Ordered by [`FeedbackStatus::rank`]:
/// a later, weaker event (a Delivery arriving after its Complaint) changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedbackStatus {
    Delayed,
    Delivered,
    /// The receiving side refused it (SES Bounce); hard or soft is in the event.
    Bounced,
    /// SES refused it after accepting the call (Reject: virus; RenderingFailure).
    Rejected,
    Complained,
}

impl FeedbackStatus {
    pub const ALL: [FeedbackStatus; 5] = [
        FeedbackStatus::Delayed,
        FeedbackStatus::Delivered,
        FeedbackStatus::Bounced,
        FeedbackStatus::Rejected,
        FeedbackStatus::Complained,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackStatus::Delayed => "delayed",
            FeedbackStatus::Delivered => "delivered",
            FeedbackStatus::Bounced => "bounced",
            FeedbackStatus::Rejected => "rejected",
            FeedbackStatus::Complained => "complained",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A delivery's feedback only moves up this order (`sent` is 0). A complaint comes after a
    /// delivery; a bounce or a delivery ends a delay.
    pub fn rank(self) -> i16 {
        match self {
            FeedbackStatus::Delayed => 1,
            FeedbackStatus::Delivered => 2,
            FeedbackStatus::Bounced | FeedbackStatus::Rejected => 3,
            FeedbackStatus::Complained => 4,
        }
    }
}

/// The rank of a recorded feedback: its status, a hard bounce above a soft one.
pub fn feedback_rank(status: FeedbackStatus, hard: bool) -> i16 {
    status.rank() * 2 + i16::from(hard && status == FeedbackStatus::Bounced)
}

/// Why an address is on a sandbox's suppression list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuppressionReason {
    /// A permanent bounce: the address does not exist. Never sent to again.
    HardBounce,
    /// The recipient marked a message as spam. A transactional campaign may opt in to sending
    /// to these anyway (`sendToComplainedAddresses`).
    Complaint,
    /// SNS: the phone number opted out of SMS.
    OptedOut,
    /// Added by an operator.
    Manual,
}

impl SuppressionReason {
    pub const ALL: [SuppressionReason; 4] = [
        SuppressionReason::HardBounce,
        SuppressionReason::Complaint,
        SuppressionReason::OptedOut,
        SuppressionReason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard-bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::OptedOut => "opted-out",
            SuppressionReason::Manual => "manual",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// The form an address is suppressed and looked up under: emails lower-cased (SES's own
/// suppression list ignores case), phone numbers as E.164. `None` for what cannot be suppressed
/// (push tokens, malformed addresses).
pub fn suppression_address(channel: Channel, address: &str) -> Option<String> {
    let address = address.trim();
    match channel {
        Channel::Email => crate::address::is_valid_email(address).then(|| address.to_lowercase()),
        Channel::Sms => crate::address::is_valid_e164(address).then(|| address.to_string()),
        Channel::Push => None,
    }
}

/// Tags Herald sets on every email, and SES returns in `mail.tags`: they find the delivery when
/// the message id alone does not (an event that overtook the sent outcome's write).
pub const TAG_EXECUTION_ID: &str = "herald-execution-id";
pub const TAG_RECIPIENT_INDEX: &str = "herald-recipient-index";
pub const TAG_CAMPAIGN_ID: &str = "herald-campaign-id";

/// One SES event about one sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackEvent {
    /// Identifies the event at SES (hex SHA-256): duplicates share it.
    pub key: String,
    /// SES's event type as published (`Bounce`, `Delivery`, ...).
    pub event_type: &'static str,
    /// The SES message id: what the worker recorded as the provider message id.
    pub message_id: String,
    /// What the delivery becomes; `None` for events that change nothing (Send).
    pub status: Option<FeedbackStatus>,
    /// For a bounce, `Permanent` (hard) or not.
    pub hard: bool,
    /// Bounce `type/subType`, complaint feedback type, delay type, reject reason.
    pub detail: Option<String>,
    /// The recipients the event is about (the bounced or complained ones).
    pub recipients: Vec<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub execution_id: Option<Uuid>,
    pub recipient_index: Option<i32>,
}

impl FeedbackEvent {
    /// Where this event puts its delivery in the order feedback moves up: [`FeedbackStatus::rank`],
    /// with a hard bounce above a soft one (a soft bounce, then the hard one, ends hard).
    pub fn rank(&self) -> i16 {
        self.status.map_or(0, |status| feedback_rank(status, self.hard))
    }

    /// Whether this event puts its recipients on the suppression list, and why.
    pub fn suppresses(&self) -> Option<SuppressionReason> {
        match self.status {
            Some(FeedbackStatus::Bounced) if self.hard => Some(SuppressionReason::HardBounce),
            Some(FeedbackStatus::Complained) => Some(SuppressionReason::Complaint),
            _ => None,
        }
    }

    /// The name reports count it under (with [`FeedbackEvent::report_reason`]).
    pub fn report_event(&self) -> Option<&'static str> {
        Some(match self.status? {
            FeedbackStatus::Delivered => "delivered",
            FeedbackStatus::Bounced if self.hard => "bounced_hard",
            FeedbackStatus::Bounced => "bounced_soft",
            FeedbackStatus::Complained => "complained",
            FeedbackStatus::Delayed => "delayed",
            FeedbackStatus::Rejected => "rejected",
        })
    }

    /// The bounce sub-type, complaint type or delay type, for the report's breakdown.
    pub fn report_reason(&self) -> String {
        let detail = self.detail.as_deref().unwrap_or_default();
        detail.rsplit('/').next().unwrap_or(detail).to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not an SES event: {0}")]
    NotSesEvent(&'static str),
}

impl FeedbackError {
    /// What is wrong, without quoting the body (serde's message may quote it).
    pub fn kind(&self) -> &'static str {
        match self {
            FeedbackError::NotJson(_) => "not JSON",
            FeedbackError::NotSesEvent(why) => why,
        }
    }
}

/// Longest text kept from an event (a diagnostic code, a reject reason).
const MAX_DETAIL: usize = 200;
/// Most recipients read from one event (SES lists at most 50 per message).
const MAX_RECIPIENTS: usize = 50;

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn short(text: &str) -> String {
    text.chars().filter(|c| *c != '\0').take(MAX_DETAIL).collect()
}

fn addresses(value: &Value, pointer: &str, field: Option<&str>) -> Vec<String> {
    let Some(items) = value.pointer(pointer).and_then(Value::as_array) else { return Vec::new() };
    items
        .iter()
        .take(MAX_RECIPIENTS)
        .filter_map(|item| match field {
            Some(field) => item.get(field).and_then(Value::as_str),
            None => item.as_str(),
        })
        .map(short)
        .collect()
}

/// A tag's first value: SES publishes `mail.tags` as `{name: [value]}`.
fn tag<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event.pointer("/mail/tags")?.get(name)?.as_array()?.first()?.as_str()
}

/// Reads one SES event notification: event publishing's `eventType` or the identity
/// notifications' `notificationType`. `Ok(None)` for events Herald does not track (Open, Click,
/// Subscription): they are acknowledged, not errors.
pub fn parse_ses_event(body: &str) -> Result<Option<FeedbackEvent>, FeedbackError> {
    let event: Value = serde_json::from_str(body).map_err(|e| FeedbackError::NotJson(e.to_string()))?;
    let kind = text(&event, "/eventType")
        .or_else(|| text(&event, "/notificationType"))
        .ok_or(FeedbackError::NotSesEvent("no eventType"))?;
    let message_id = text(&event, "/mail/messageId").ok_or(FeedbackError::NotSesEvent("no mail.messageId"))?;
    if message_id.is_empty() || message_id.len() > 200 || message_id.contains(char::is_control) {
        return Err(FeedbackError::NotSesEvent("mail.messageId is not an SES message id"));
    }
    let destination = addresses(&event, "/mail/destination", None);
    let (event_type, status, hard, detail, recipients, part): (&'static str, _, _, _, _, &str) = match kind {
        "Delivery" => {
            let recipients = addresses(&event, "/delivery/recipients", None);
            ("Delivery", Some(FeedbackStatus::Delivered), false, None, recipients, "/delivery")
        }
        "Bounce" => {
            let bounce_type = text(&event, "/bounce/bounceType").ok_or(FeedbackError::NotSesEvent("no bounceType"))?;
            let sub_type = text(&event, "/bounce/bounceSubType").unwrap_or("Undetermined");
            let recipients = addresses(&event, "/bounce/bouncedRecipients", Some("emailAddress"));
            let detail = format!("{}/{}", short(bounce_type), short(sub_type));
            ("Bounce", Some(FeedbackStatus::Bounced), bounce_type == "Permanent", Some(detail), recipients, "/bounce")
        }
        "Complaint" => {
            let recipients = addresses(&event, "/complaint/complainedRecipients", Some("emailAddress"));
            let detail = text(&event, "/complaint/complaintFeedbackType").map(short);
            ("Complaint", Some(FeedbackStatus::Complained), false, detail, recipients, "/complaint")
        }
        "DeliveryDelay" => {
            let recipients = addresses(&event, "/deliveryDelay/delayedRecipients", Some("emailAddress"));
            let detail = text(&event, "/deliveryDelay/delayType").map(short);
            ("DeliveryDelay", Some(FeedbackStatus::Delayed), false, detail, recipients, "/deliveryDelay")
        }
        "Reject" => {
            let detail = text(&event, "/reject/reason").map(short);
            ("Reject", Some(FeedbackStatus::Rejected), false, detail, Vec::new(), "/reject")
        }
        "Rendering Failure" | "RenderingFailure" => {
            let detail = text(&event, "/failure/errorMessage").map(short);
            ("RenderingFailure", Some(FeedbackStatus::Rejected), false, detail, Vec::new(), "/failure")
        }
        "Send" => ("Send", None, false, None, Vec::new(), "/send"),
        _ => return Ok(None),
    };
    let recipients = if recipients.is_empty() { destination } else { recipients };
    let occurred = text(&event, &format!("{part}/timestamp")).or_else(|| text(&event, "/mail/timestamp"));
    let occurred_at = occurred.and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
    // What tells this event from another of the same message: the feedback id SES gives bounces
    // and complaints, else the event's timestamp (SES resends an event unchanged).
    let id = text(&event, &format!("{part}/feedbackId")).or(occurred).unwrap_or_default();
    let mut hash = Sha256::new();
    for piece in [message_id, event_type, id] {
        hash.update(piece.as_bytes());
        hash.update([0]);
    }
    for recipient in &recipients {
        hash.update(recipient.to_lowercase().as_bytes());
        hash.update([0]);
    }
    let key = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(FeedbackEvent {
        key,
        event_type,
        message_id: message_id.to_string(),
        status,
        hard,
        detail,
        recipients,
        occurred_at,
        execution_id: tag(&event, TAG_EXECUTION_ID).and_then(|id| Uuid::parse_str(id).ok()),
        recipient_index: tag(&event, TAG_RECIPIENT_INDEX).and_then(|i| i.parse().ok()),
    }))
}
