//! SNS's message envelope, as an SNS HTTPS subscription POSTs it and as an SQS subscription
//! queues it (unless raw delivery is on), and the text its signature covers.
//!
//! <https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html>: the string to
//! sign is `Name\nValue\n` for a fixed list of fields in a fixed order, a field that is absent
//! (`Subject`) being left out.

use serde::Deserialize;

/// The fields of an SNS message Herald reads. Unknown fields are ignored (SNS adds some, e.g.
/// `UnsubscribeURL`, `MessageAttributes`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    pub message_id: String,
    pub topic_arn: String,
    #[serde(default)]
    pub subject: Option<String>,
    pub message: String,
    pub timestamp: String,
    #[serde(default)]
    pub signature_version: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default, rename = "SigningCertURL")]
    pub signing_cert_url: Option<String>,
    #[serde(default, rename = "SubscribeURL")]
    pub subscribe_url: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

pub const NOTIFICATION: &str = "Notification";
pub const SUBSCRIPTION_CONFIRMATION: &str = "SubscriptionConfirmation";
pub const UNSUBSCRIBE_CONFIRMATION: &str = "UnsubscribeConfirmation";

impl SnsMessage {
    /// The bytes the signature is over, or `None` for a message type SNS does not sign this way
    /// (or one missing a field its type requires).
    pub fn string_to_sign(&self) -> Option<String> {
        let mut fields: Vec<(&str, &str)> = vec![("Message", &self.message), ("MessageId", &self.message_id)];
        match self.kind.as_str() {
            NOTIFICATION => {
                if let Some(subject) = &self.subject {
                    fields.push(("Subject", subject));
                }
                fields.extend([("Timestamp", self.timestamp.as_str()), ("TopicArn", &self.topic_arn)]);
            }
            SUBSCRIPTION_CONFIRMATION | UNSUBSCRIBE_CONFIRMATION => {
                fields.push(("SubscribeURL", self.subscribe_url.as_deref()?));
                fields.push(("Timestamp", &self.timestamp));
                fields.push(("Token", self.token.as_deref()?));
                fields.push(("TopicArn", &self.topic_arn));
            }
            _ => return None,
        }
        fields.push(("Type", &self.kind));
        Some(fields.iter().map(|(name, value)| format!("{name}\n{value}\n")).collect())
    }
}

/// The SES event in a queued body: the `Message` of an SNS notification envelope, or the body
/// itself when the subscription delivers raw messages.
pub fn ses_event_of(body: &str) -> Result<String, super::FeedbackError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| super::FeedbackError::NotJson(e.to_string()))?;
    if value.get("Type").and_then(serde_json::Value::as_str) == Some(NOTIFICATION) {
        return value
            .get("Message")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or(super::FeedbackError::NotSesEvent("an SNS notification without a Message"));
    }
    Ok(body.to_string())
}
