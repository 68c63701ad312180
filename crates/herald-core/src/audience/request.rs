//! AJO's `POST /im/executions/audience` body and its validation against the campaign.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::campaign::FieldError;
use crate::execution::{CampaignFacts, MAX_CONTEXT_BYTES, MAX_IDENTIFIER_LENGTH};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AudienceRef {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleRequest {
    pub execute_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AudienceExecutionRequest {
    pub request_id: String,
    pub campaign_id: String,
    /// Without it, the campaign's own `audienceId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<AudienceRef>,
    /// Shared by every recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
    /// Send at `executeAt` rather than now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleRequest>,
}

/// How far ahead a schedule may be set.
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 366;

/// Checks the request against the campaign and returns the context every message carries.
/// Every problem is reported.
pub fn validate(
    request: &AudienceExecutionRequest,
    campaign: &CampaignFacts,
    now: DateTime<Utc>,
) -> Result<Map<String, Value>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut problem = |pointer: &str, detail: String| errors.push(FieldError { pointer: pointer.into(), detail });
    if request.request_id.trim().is_empty() || request.request_id.len() > MAX_IDENTIFIER_LENGTH {
        problem("/requestId", format!("must be 1 to {MAX_IDENTIFIER_LENGTH} bytes"));
    }
    let context = request.context.clone().unwrap_or_default();
    if context.contains_key("system") {
        problem("/context/system", "`context.system` is reserved".into());
    }
    let size = serde_json::to_vec(&context).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_CONTEXT_BYTES {
        problem("/context", format!("context is {size} bytes; the limit is {MAX_CONTEXT_BYTES}"));
    }
    let missing: Vec<&str> =
        campaign.required_context.iter().filter(|key| !context.contains_key(*key)).map(String::as_str).collect();
    if !missing.is_empty() {
        problem("/context", format!("the campaign uses context attributes this request lacks: {}", missing.join(", ")));
    }
    if let Some(schedule) = &request.schedule {
        if schedule.execute_at > now + chrono::Duration::days(MAX_SCHEDULE_AHEAD_DAYS) {
            problem("/schedule/executeAt", format!("at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead"));
        } else if chrono::Datelike::year(&schedule.execute_at) < 1 {
            problem("/schedule/executeAt", "a date in the years 1 to 9999".into());
        }
    }
    if errors.is_empty() { Ok(context) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::Channel;

    fn facts() -> CampaignFacts {
        CampaignFacts {
            channel: Channel::Sms,
            identity_namespace: Some("crm".into()),
            required_context: BTreeSet::from(["code".to_string()]),
        }
    }

    fn request(body: Value) -> Result<AudienceExecutionRequest, serde_json::Error> {
        serde_json::from_value(body)
    }

    #[test]
    fn hostile_bodies_are_refused() {
        assert!(request(serde_json::json!({"requestId": "r", "campaignId": "c", "sandbox": "other"})).is_err());
        assert!(
            request(serde_json::json!({"requestId": "r", "campaignId": "c", "audience": {"id": "a", "sql": "x"}}))
                .is_err()
        );
        assert!(
            request(serde_json::json!({"requestId": "r", "campaignId": "c", "schedule": {"executeAt": "tomorrow"}}))
                .is_err()
        );
        let now = Utc::now();
        let far = request(serde_json::json!({
            "requestId": " ", "campaignId": "c", "context": {"system": 1},
            "schedule": {"executeAt": (now + chrono::Duration::days(400)).to_rfc3339()}
        }))
        .unwrap();
        let errors = validate(&far, &facts(), now).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/requestId", "/context/system", "/context", "/schedule/executeAt"]);
        let big = request(serde_json::json!({
            "requestId": "r", "campaignId": "c", "context": {"code": "1", "pad": "x".repeat(MAX_CONTEXT_BYTES)}
        }))
        .unwrap();
        assert_eq!(validate(&big, &facts(), now).unwrap_err()[0].pointer, "/context");
        let ancient = request(serde_json::json!({
            "requestId": "r", "campaignId": "c", "context": {"code": "1"}, "schedule": {"executeAt": "0000-01-01T00:00:00Z"}
        }))
        .unwrap();
        assert_eq!(validate(&ancient, &facts(), now).unwrap_err()[0].pointer, "/schedule/executeAt");
    }

    #[test]
    fn a_valid_request_gives_its_context() {
        let ok = request(serde_json::json!({
            "requestId": "r", "campaignId": "c", "audience": {"id": "a"}, "context": {"code": "42"}
        }))
        .unwrap();
        assert_eq!(validate(&ok, &facts(), Utc::now()).unwrap()["code"], "42");
    }
}
