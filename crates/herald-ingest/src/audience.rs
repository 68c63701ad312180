//! `POST /im/executions/audience`: one request sends a campaign to an audience, now or at its
//! `schedule.executeAt`. The request is only recorded here (idempotent on its request id); the
//! fan-out (`fanout.rs`) publishes its messages, in any instance, once it is due.

use chrono::{DateTime, Utc};
use herald_core::CampaignStatus;
use herald_core::audience::request::{self, AudienceExecutionRequest};
use herald_core::campaign::FieldError;
use herald_core::execution;
use herald_store::{AudienceClaim, AudienceExecution, NewAudienceExecution};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Ingest, IngestError};

/// An accepted audience execution (a 202): running now, or scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct AudienceAccepted {
    pub execution: AudienceExecution,
    /// True when this answers a retry of an already accepted request.
    pub replayed: bool,
}

impl Ingest {
    /// Records `request` (whose raw JSON is `body`) for `sandbox` at `now`: it runs at once, or at
    /// its `executeAt` when that is in the future.
    pub async fn execute_audience(
        &self,
        sandbox: &str,
        body: &Value,
        request: &AudienceExecutionRequest,
        now: DateTime<Utc>,
    ) -> Result<AudienceAccepted, IngestError> {
        let (campaign_id, campaign) = self.campaign(sandbox, &request.campaign_id).await?;
        let execute_at = request.schedule.as_ref().map_or(now, |schedule| schedule.execute_at);
        let scheduled = execute_at > now;
        // A schedule may be set before the campaign's start date, for a time inside its dates.
        let status = campaign.status(now);
        let live_then = campaign.status(execute_at) == CampaignStatus::Live;
        match status {
            CampaignStatus::Live if live_then => {}
            CampaignStatus::Scheduled if scheduled && live_then => {}
            CampaignStatus::Live | CampaignStatus::Scheduled | CampaignStatus::Completed => {
                return Err(IngestError::OutsideSchedule(if scheduled { campaign.status(execute_at) } else { status }));
            }
            _ => return Err(IngestError::NotLive(status)),
        }
        let live = campaign.live.as_ref().ok_or(IngestError::NotLive(status))?;
        let context = request::validate(request, &live.facts, now).map_err(IngestError::Invalid)?;
        let audience_text =
            request.audience.as_ref().map(|a| a.id.clone()).or(live.audience_id.map(|id| id.to_string()));
        let Some(audience_text) = audience_text else {
            return Err(IngestError::Invalid(vec![FieldError {
                pointer: "/audience".into(),
                detail: "name an audience ({\"id\": …}), or give the campaign an `audienceId`".into(),
            }]));
        };
        let audience_id = Uuid::parse_str(&audience_text).map_err(|_| IngestError::AudienceNotFound)?;
        let audience = self.store.get_audience(sandbox, audience_id).await.map_err(|e| IngestError::from(&e))?;
        if audience.is_none() {
            return Err(IngestError::AudienceNotFound);
        }
        let now = chrono::SubsecRound::trunc_subsecs(now, 6);
        let new = NewAudienceExecution {
            sandbox: sandbox.to_string(),
            campaign_id,
            request_id: request.request_id.clone(),
            body_hash: Sha256::digest(execution::canonical_json(body)).to_vec(),
            audience_id,
            context: Value::Object(context),
            execute_at: chrono::SubsecRound::trunc_subsecs(execute_at, 6),
            schedule: scheduled,
            now,
            window: chrono::Duration::from_std(self.settings.fanout.window).unwrap_or(chrono::Duration::hours(12)),
        };
        match self.store.claim_audience_execution(&new).await.map_err(|e| IngestError::from(&e))? {
            AudienceClaim::Created(execution) => {
                if !scheduled {
                    // Any instance's fan-out loop picks it up; this one's looks at once.
                    self.fanout_wake.notify_one();
                }
                Ok(AudienceAccepted { execution, replayed: false })
            }
            AudienceClaim::Existing(execution) => Ok(AudienceAccepted { execution, replayed: true }),
            AudienceClaim::BodyMismatch => Err(IngestError::KeyReused),
        }
    }
}
