//! A campaign's definition: what one version of a campaign says (sender, content, schedule,
//! limits). The wire form is AJO's camelCase JSON; unknown fields are refused so that a typo in
//! a field name is an error, not a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Largest accepted template part (subject, html, body, ...), in bytes.
pub const MAX_TEMPLATE_PART_BYTES: usize = 256 * 1024;
/// AJO's delivery throttle range, in messages per second.
pub const THROTTLE_RANGE: std::ops::RangeInclusive<u32> = 1..=2_000;
/// An upper bound on message time-to-live: a week-old transactional message is never useful.
pub const MAX_MESSAGE_TTL_SECONDS: u32 = 7 * 24 * 3600;
pub const MAX_NAME_LENGTH: usize = 200;

/// The channel a campaign sends on. Fixed when the campaign is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Push,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Push];

    /// The channel named `name` (its [`Channel::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }

    /// The identity namespace whose identities are this channel's addresses: an `aep` recipient
    /// "namespace email, userId jane@example.com" means that address. Push has none (a device
    /// token is not an identity).
    pub fn address_namespace(self) -> Option<&'static str> {
        match self {
            Channel::Email => Some("email"),
            Channel::Sms => Some("phone"),
            Channel::Push => None,
        }
    }

    /// Whether `address` is well formed for this channel: an email address, an E.164 number, a
    /// device token (not blank, at most 4 KiB).
    pub fn is_valid_address(self, address: &str) -> bool {
        match self {
            Channel::Email => crate::address::is_valid_email(address),
            Channel::Sms => crate::address::is_valid_e164(address),
            Channel::Push => !address.trim().is_empty() && address.len() <= 4096,
        }
    }

    /// `user_id` as this channel's address, when `namespace` is the channel's address namespace
    /// and `user_id` is a well-formed address for it (`ghost` in `phone` is not a number).
    pub fn identity_address<'a>(self, namespace: &str, user_id: &'a str) -> Option<&'a str> {
        let well_formed = self != Channel::Push && self.is_valid_address(user_id);
        (well_formed && self.address_namespace() == Some(namespace)).then_some(user_id)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::parse(s).ok_or_else(|| format!("unknown channel `{s}`"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    #[default]
    Transactional,
    Marketing,
}

/// Optional start and end of the window in which the campaign can be executed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_date: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_date: Option<DateTime<Utc>>,
}

/// The sender settings ("message surface"). Which fields matter depends on the channel; the
/// review reports the ones a channel needs and lacks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Surface {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origination_number: Option<String>,
    /// SNS platform application per push platform (`apns`, `fcm`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_application_arn: Option<BTreeMap<String, String>>,
    /// The SES configuration set each email names, so that SES publishes its events (delivery,
    /// bounce, complaint) where Herald takes them in; `HERALD_SES_CONFIGURATION_SET` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_set: Option<String>,
}

/// The message content; every string is a tera template over `profile` and `context`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Push payload data: each value is a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
}

/// One version of a campaign: everything that can change between versions. The channel and name
/// live on the campaign itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CampaignDefinition {
    #[serde(default)]
    pub category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_namespace: Option<String>,
    #[serde(default)]
    pub create_new_profiles: bool,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub surface: Surface,
    #[serde(default)]
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_rate_per_sec: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl_seconds: Option<u32>,
    /// Send again a message whose earlier attempt may have gone out (its worker died during the
    /// provider call). Off by default: for an OTP a duplicate is worse than a retry by the user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend_maybe_sent: bool,
    /// Send to addresses that are suppressed only because their owner complained (a password
    /// reset the user asked for). Transactional campaigns only; hard-bounced, opted-out and
    /// operator-suppressed addresses are never sent to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub send_to_complained_addresses: bool,
    /// Executed through `POST /im/executions/highthroughput` (AJO's high-throughput tier):
    /// external recipients only, never a profile looked up or created, so the content may read
    /// only `context.*` (a review rule). The unitary endpoint still takes the campaign.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub high_throughput: bool,
    /// The stored audience the campaign sends to (AJO's `POST /im/executions/audience`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience_id: Option<uuid::Uuid>,
}

/// A structural problem found when a definition is saved (as opposed to the review problems that
/// only block activation): these make the save itself fail with 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer to the offending field, e.g. `/content/html`.
    pub pointer: String,
    pub detail: String,
}

impl CampaignDefinition {
    /// The template parts of the content, as (JSON pointer, name, source), in a stable order.
    pub fn template_parts(&self) -> Vec<(String, String, &str)> {
        let c = &self.content;
        let mut parts = Vec::new();
        for (name, value) in
            [("subject", &c.subject), ("html", &c.html), ("text", &c.text), ("title", &c.title), ("body", &c.body)]
        {
            if let Some(source) = value {
                parts.push((format!("/content/{name}"), name.to_string(), source.as_str()));
            }
        }
        if let Some(data) = &c.data {
            for (key, source) in data {
                parts.push((format!("/content/data/{key}"), format!("data.{key}"), source.as_str()));
            }
        }
        parts
    }

    /// Checks that hold for every saved version, complete or not: sizes and numeric ranges.
    pub fn check_limits(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (pointer, _, source) in self.template_parts() {
            if source.len() > MAX_TEMPLATE_PART_BYTES {
                errors.push(FieldError {
                    pointer,
                    detail: format!("template is {} bytes; the limit is {MAX_TEMPLATE_PART_BYTES}", source.len()),
                });
            }
        }
        if let Some(rate) = self.throttle_rate_per_sec
            && !THROTTLE_RANGE.contains(&rate)
        {
            errors.push(FieldError {
                pointer: "/throttleRatePerSec".into(),
                detail: format!("must be between {} and {}", THROTTLE_RANGE.start(), THROTTLE_RANGE.end()),
            });
        }
        if let Some(ttl) = self.message_ttl_seconds
            && (ttl == 0 || ttl > MAX_MESSAGE_TTL_SECONDS)
        {
            errors.push(FieldError {
                pointer: "/messageTtlSeconds".into(),
                detail: format!("must be between 1 and {MAX_MESSAGE_TTL_SECONDS}"),
            });
        }
        if let Some(namespace) = &self.identity_namespace
            && (namespace.trim().is_empty() || namespace.len() > 100)
        {
            errors.push(FieldError {
                pointer: "/identityNamespace".into(),
                detail: "must be 1 to 100 characters".into(),
            });
        }
        if self.send_to_complained_addresses && self.category != Category::Transactional {
            errors.push(FieldError {
                pointer: "/sendToComplainedAddresses".into(),
                detail: "only a transactional campaign may send to addresses that complained".into(),
            });
        }
        if let Some(set) = &self.surface.configuration_set
            && (set.is_empty()
                || set.len() > 64
                || !set.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            errors.push(FieldError {
                pointer: "/surface/configurationSet".into(),
                detail: "an SES configuration set name: 1 to 64 letters, digits, `-` or `_`".into(),
            });
        }
        errors
    }
}

/// Checks a campaign name: non-empty after trimming, at most [`MAX_NAME_LENGTH`] characters.
pub fn check_name(name: &str) -> Option<FieldError> {
    let trimmed = name.trim();
    (trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_LENGTH)
        .then(|| FieldError { pointer: "/name".into(), detail: format!("must be 1 to {MAX_NAME_LENGTH} characters") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_in_a_definition_are_refused() {
        let err = serde_json::from_value::<CampaignDefinition>(serde_json::json!({"content": {"subjet": "typo"}}));
        assert!(err.unwrap_err().to_string().contains("subjet"));
    }

    #[test]
    fn high_throughput_and_the_audience_are_camel_case_and_left_out_when_unset() {
        let audience = uuid::Uuid::nil();
        let json = serde_json::json!({"highThroughput": true, "audienceId": audience});
        let definition: CampaignDefinition = serde_json::from_value(json.clone()).unwrap();
        assert!(definition.high_throughput);
        assert_eq!(definition.audience_id, Some(audience));
        assert_eq!(serde_json::to_value(&definition).unwrap()["highThroughput"], true);
        let plain = serde_json::to_value(CampaignDefinition::default()).unwrap();
        assert!(plain.get("highThroughput").is_none() && plain.get("audienceId").is_none(), "{plain}");
    }

    #[test]
    fn limits_report_oversize_templates_and_out_of_range_numbers() {
        let definition = CampaignDefinition {
            content: Content { html: Some("x".repeat(MAX_TEMPLATE_PART_BYTES + 1)), ..Default::default() },
            throttle_rate_per_sec: Some(0),
            message_ttl_seconds: Some(MAX_MESSAGE_TTL_SECONDS + 1),
            ..Default::default()
        };
        let pointers: Vec<String> = definition.check_limits().into_iter().map(|e| e.pointer).collect();
        assert_eq!(pointers, ["/content/html", "/throttleRatePerSec", "/messageTtlSeconds"]);
    }

    #[test]
    fn template_parts_include_push_data_values() {
        let mut data = BTreeMap::new();
        data.insert("deepLink".to_string(), "app://orders/{{ context.orderId }}".to_string());
        let definition = CampaignDefinition {
            content: Content { title: Some("t".into()), data: Some(data), ..Default::default() },
            ..Default::default()
        };
        let names: Vec<String> = definition.template_parts().into_iter().map(|(_, name, _)| name).collect();
        assert_eq!(names, ["title", "data.deepLink"]);
    }
}
