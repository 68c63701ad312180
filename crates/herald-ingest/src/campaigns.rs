//! What ingest caches of a campaign: its state and, for the live version, the facts validation
//! needs (channel, namespace, required context). See [`herald_store::CampaignCache`] for how
//! the cache stays fresh.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use herald_core::execution::CampaignFacts;
use herald_core::template::CompiledContent;
use herald_core::{CampaignStatus, Channel, Schedule, StoredState};
use herald_store::CampaignRecord;
use uuid::Uuid;

/// What ingest needs of a campaign's live version.
#[derive(Debug, Clone)]
pub struct LiveVersion {
    pub id: Uuid,
    pub schedule: Schedule,
    pub facts: CampaignFacts,
    pub message_ttl_seconds: Option<u32>,
    pub create_new_profiles: bool,
    /// Marked for `POST /im/executions/highthroughput` (see [`crate::ExecutionMode`]).
    pub high_throughput: bool,
    /// Paces an audience fan-out's publishing (the workers enforce it on sends).
    pub throttle_rate_per_sec: Option<u32>,
    /// The audience an audience execution without one sends to.
    pub audience_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct CachedCampaign {
    pub id: Uuid,
    pub sandbox: String,
    pub channel: Channel,
    pub state: StoredState,
    pub live: Option<LiveVersion>,
}

impl CachedCampaign {
    pub fn status(&self, now: DateTime<Utc>) -> CampaignStatus {
        CampaignStatus::at(self.state, self.live.as_ref().map(|live| &live.schedule), now)
    }

    pub fn from_record(record: &CampaignRecord) -> Self {
        let live = record.live.as_ref().map(|version| {
            let definition = &version.definition;
            LiveVersion {
                id: version.id,
                schedule: definition.schedule.clone(),
                facts: CampaignFacts {
                    channel: record.channel,
                    identity_namespace: definition.identity_namespace.clone(),
                    required_context: required_context(&definition.content),
                },
                message_ttl_seconds: definition.message_ttl_seconds,
                create_new_profiles: definition.create_new_profiles,
                high_throughput: definition.high_throughput,
                throttle_rate_per_sec: definition.throttle_rate_per_sec,
                audience_id: definition.audience_id,
            }
        });
        Self { id: record.id, sandbox: record.sandbox.clone(), channel: record.channel, state: record.state, live }
    }
}

/// The `context` attributes the content reads without a guard: each must be in every execution.
pub fn required_context(content: &herald_core::Content) -> BTreeSet<String> {
    // A live version passed review, so it compiles; if it somehow does not, nothing is required
    // here and the worker reports the rendering error.
    let compiled = match CompiledContent::compile(content) {
        Ok(compiled) => compiled,
        Err(errors) => {
            let parts: Vec<&str> = errors.iter().map(|error| error.part.as_str()).collect();
            tracing::warn!(?parts, "a live version's content does not compile; its deliveries will fail rendering");
            return BTreeSet::new();
        }
    };
    compiled
        .analyse()
        .into_iter()
        .flat_map(|(_, analysis)| analysis.variables)
        .filter(|variable| variable.root() == "context" && !variable.guarded)
        .filter_map(|variable| variable.first_key().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unguarded_context_reads_are_required() {
        let content = herald_core::Content {
            text: Some("{{ context.url }} {{ context.name | default(value='x') }} {% if context.vip %}!{% endif %} {{ context.otp.code }}".into()),
            ..Default::default()
        };
        let required: Vec<String> = required_context(&content).into_iter().collect();
        assert_eq!(required, ["otp", "url"]);
    }
}
