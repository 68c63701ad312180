//! The campaign document clients send and read: AJO-style camelCase, the campaign's name,
//! description and channel beside the fields of its definition. PATCH is a JSON merge patch
//! (RFC 7396) applied to the current draft's document.

use herald_core::campaign::{FieldError, check_name};
use herald_core::{CampaignDefinition, Category, Channel, Content, Schedule, Surface};
use herald_store::{CampaignRecord, VersionRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CampaignDocument {
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    pub(crate) channel: Channel,
    #[serde(default)]
    category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity_namespace: Option<String>,
    #[serde(default)]
    create_new_profiles: bool,
    #[serde(default)]
    schedule: Schedule,
    #[serde(default)]
    surface: Surface,
    #[serde(default)]
    content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    throttle_rate_per_sec: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_ttl_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    resend_maybe_sent: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    send_to_complained_addresses: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    high_throughput: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audience_id: Option<uuid::Uuid>,
}

impl CampaignDocument {
    pub(crate) fn from_parts(
        name: &str,
        description: Option<&str>,
        channel: Channel,
        definition: &CampaignDefinition,
    ) -> Self {
        let d = definition.clone();
        Self {
            name: name.to_string(),
            description: description.map(str::to_string),
            channel,
            category: d.category,
            identity_namespace: d.identity_namespace,
            create_new_profiles: d.create_new_profiles,
            schedule: d.schedule,
            surface: d.surface,
            content: d.content,
            throttle_rate_per_sec: d.throttle_rate_per_sec,
            message_ttl_seconds: d.message_ttl_seconds,
            resend_maybe_sent: d.resend_maybe_sent,
            send_to_complained_addresses: d.send_to_complained_addresses,
            high_throughput: d.high_throughput,
            audience_id: d.audience_id,
        }
    }

    /// The document of a record's newest version.
    pub(crate) fn of_latest(record: &CampaignRecord) -> Self {
        let definition = record.latest().map(|version| version.definition.clone()).unwrap_or_default();
        Self::from_parts(&record.name, record.description.as_deref(), record.channel, &definition)
    }

    pub(crate) fn definition(&self) -> CampaignDefinition {
        CampaignDefinition {
            category: self.category,
            identity_namespace: self.identity_namespace.clone(),
            create_new_profiles: self.create_new_profiles,
            schedule: self.schedule.clone(),
            surface: self.surface.clone(),
            content: self.content.clone(),
            throttle_rate_per_sec: self.throttle_rate_per_sec,
            message_ttl_seconds: self.message_ttl_seconds,
            resend_maybe_sent: self.resend_maybe_sent,
            send_to_complained_addresses: self.send_to_complained_addresses,
            high_throughput: self.high_throughput,
            audience_id: self.audience_id,
        }
    }

    /// Checks every saved document must pass, complete or not.
    pub(crate) fn check(&self) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> = check_name(&self.name).into_iter().collect();
        if self.description.as_ref().is_some_and(|description| description.len() > 2_000) {
            errors.push(FieldError { pointer: "/description".into(), detail: "at most 2000 bytes".into() });
        }
        // PostgreSQL's timestamps end at 4713 BC (chrono's reach further): activation copies the
        // schedule into timestamp columns, where such a date would fail the statement.
        for (pointer, at) in
            [("/schedule/startDate", self.schedule.start_date), ("/schedule/endDate", self.schedule.end_date)]
        {
            if at.is_some_and(|at| !(1..=9999).contains(&chrono::Datelike::year(&at))) {
                errors.push(FieldError {
                    pointer: pointer.into(),
                    detail: "must be between the years 1 and 9999".into(),
                });
            }
        }
        errors.extend(self.definition().check_limits());
        errors
    }
}

/// RFC 7396: objects merge recursively, `null` removes, anything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn version_view(version: &VersionRecord) -> Value {
    json!({
        "id": version.id,
        "number": version.number,
        "createdAt": version.created_at,
        "updatedAt": version.updated_at,
        "activatedAt": version.activated_at,
        "definition": version.definition,
    })
}

/// The campaign resource as the API returns it.
pub(crate) fn campaign_view(record: &CampaignRecord, now: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "id": record.id,
        "name": record.name,
        "description": record.description,
        "channel": record.channel,
        "status": record.status(now),
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "activatedAt": record.activated_at,
        "stoppedAt": record.stopped_at,
        "archivedAt": record.archived_at,
        "liveVersion": record.live.as_ref().map(version_view),
        "draftVersion": record.draft.as_ref().map(version_view),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut target, &json!({"c": [1]}));
        assert_eq!(target, json!({"a": "z", "c": [1]}));
    }
}
