//! `GET /dead-letters` and `POST /dead-letters/{id}/replay`: what could not be delivered, and
//! another try for it. Replay is idempotent.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_broker::replay::{ReplayError, ReplayOutcome, replay_dead_letter};
use herald_core::Scope;
use herald_store::DeadLetter;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::json::ApiQuery;
use crate::problem::Problem;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListQuery {
    campaign_id: Option<Uuid>,
    reason: Option<String>,
    limit: Option<i64>,
}

/// A dead letter as listed: ids, reason and error; never the body, which holds addresses and context.
pub fn view(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.id,
        "messageId": letter.message_id,
        "campaignId": letter.campaign_id,
        "executionId": letter.execution_id,
        "recipientIndex": letter.recipient_index,
        "channel": letter.channel,
        "reason": letter.reason,
        "lastError": letter.last_error,
        "deadLetteredAt": letter.dead_lettered_at,
        "replayedAt": letter.replayed_at,
        "replays": letter.replays,
    })
}

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ExecutionsRead)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::validation(
            "Invalid query string",
            vec![Problem::field_error("/limit", "must be 1 to 1000")],
        ));
    }
    let letters =
        state.store.list_dead_letters(Some(&caller.sandbox), query.campaign_id, query.reason.as_deref(), limit).await?;
    Ok(Json(json!({ "items": letters.iter().map(view).collect::<Vec<_>>() })))
}

pub(crate) async fn replay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require(Scope::CampaignsWrite)?;
    let not_found = || Problem::not_found("dead-letter-not-found", "No such dead letter");
    let id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let ingest =
        state.ingest.as_ref().ok_or_else(|| Problem::unavailable("the broker is not configured on this instance"))?;
    match replay_dead_letter(&state.store, ingest.broker(), Some(&caller.sandbox), id, state.clock.now()).await {
        Ok(ReplayOutcome::Replayed) => Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "replayed": true })))),
        Ok(ReplayOutcome::AlreadyReplayed) => {
            Ok((StatusCode::OK, Json(json!({ "id": id, "replayed": false, "detail": "already replayed" }))))
        }
        Ok(ReplayOutcome::NotFound) => Err(not_found()),
        Err(ReplayError::Store(error)) => Err(error.into()),
        Err(ReplayError::Broker(error)) => Err(Problem::unavailable(format!("broker: {error}"))),
    }
}
