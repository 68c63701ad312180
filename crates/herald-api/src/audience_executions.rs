//! AJO's audience executions and schedules: `POST /im/executions/audience`,
//! `GET /im/executions/audience/{executionId}`, `GET` and `DELETE
//! /im/executions/schedules/{scheduleId}`, and Herald's `GET /campaigns/{id}/schedules`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use herald_core::Scope;
use herald_core::audience::request::AudienceExecutionRequest;
use herald_store::{AudienceExecution, CancelOutcome, FanoutCounts, FanoutStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::executions::{accepted_response, admit, problem_for, with_ids};
use crate::json::ApiJson;
use crate::problem::Problem;

/// Progress counts read a fan-out's deliveries (a million rows for a million members): each
/// process answers polls of one execution from one count a second at most.
static COUNTS: std::sync::Mutex<Vec<(Uuid, std::time::Instant, FanoutCounts)>> = std::sync::Mutex::new(Vec::new());
const COUNTS_FRESH: std::time::Duration = std::time::Duration::from_secs(1);
const COUNTS_KEPT: usize = 256;

async fn counts(state: &AppState, execution: &AudienceExecution) -> Result<FanoutCounts, Problem> {
    let id = execution.execution_id;
    let cached = |entries: &Vec<(Uuid, std::time::Instant, FanoutCounts)>| {
        entries.iter().find(|(key, at, _)| *key == id && at.elapsed() < COUNTS_FRESH).map(|(_, _, counts)| *counts)
    };
    // A finished fan-out's counts still move (queued messages are being sent), so every
    // execution is counted afresh once its entry is a second old.
    if let Some(counts) = cached(&COUNTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
        return Ok(counts);
    }
    let counts = state.store.fanout_counts(id).await?;
    let mut entries = COUNTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    entries.retain(|(key, at, _)| *key != id && at.elapsed() < COUNTS_FRESH);
    if entries.len() >= COUNTS_KEPT {
        entries.remove(0);
    }
    entries.push((id, std::time::Instant::now(), counts));
    Ok(counts)
}

/// AJO's execution status.
fn execution_status(status: FanoutStatus) -> &'static str {
    match status {
        FanoutStatus::Scheduled | FanoutStatus::Running => "InProgress",
        FanoutStatus::Succeeded => "Succeeded",
        FanoutStatus::Cancelled | FanoutStatus::Failed => "Failed",
    }
}

fn schedule_view(execution: &AudienceExecution) -> Value {
    let status = match execution.status {
        FanoutStatus::Scheduled => "Scheduled",
        FanoutStatus::Cancelled => "Cancelled",
        _ => "Fired",
    };
    let mut view = json!({
        "scheduleId": execution.schedule_id,
        "scheduleStatus": status,
        "executeAt": execution.execute_at,
        "requestId": execution.request_id,
        "campaignId": execution.campaign_id,
        "audienceId": execution.audience_id,
        "createdAt": execution.created_at,
    });
    if execution.fired_at.is_some() {
        view["executionId"] = json!(execution.execution_id);
        view["firedAt"] = json!(execution.fired_at);
        view["lateMs"] = json!(execution.late_ms);
    }
    if execution.status == FanoutStatus::Cancelled {
        view["cancelledAt"] = json!(execution.finished_at);
    }
    view
}

pub(crate) async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    let (ingest, request): (_, AudienceExecutionRequest) = admit(&state, &caller, &body)?;
    let accepted = ingest
        .execute_audience(&caller.sandbox, &body, &request, state.clock.now())
        .await
        .map_err(|error| with_ids(problem_for(error), &body))?;
    let execution = &accepted.execution;
    let answer = if execution.schedule_id.is_some() {
        schedule_view(execution)
    } else {
        json!({
            "executionId": execution.execution_id,
            "requestId": execution.request_id,
            "campaignId": execution.campaign_id,
            "audienceId": execution.audience_id,
            "status": execution_status(execution.status),
            "createdAt": execution.created_at,
        })
    };
    Ok(accepted_response(answer, accepted.replayed))
}

pub(crate) async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(execution_id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ExecutionsRead)?;
    let not_found = || Problem::not_found("execution-not-found", "No such audience execution");
    let id = Uuid::parse_str(&execution_id).map_err(|_| not_found())?;
    let execution = state.store.audience_execution(&caller.sandbox, id).await?.ok_or_else(not_found)?;
    // A schedule that has not fired (or never will) is not an execution yet.
    if execution.fired_at.is_none() {
        return Err(not_found());
    }
    let counts = counts(&state, &execution).await?;
    Ok(Json(json!({
        "executionId": execution.execution_id,
        "requestId": execution.request_id,
        "status": execution_status(execution.status),
        "createdAt": execution.created_at,
        "campaignId": execution.campaign_id,
        "audienceId": execution.audience_id,
        "targetedProfileCount": execution.targeted,
        "scheduleId": execution.schedule_id,
        "firedAt": execution.fired_at,
        "lateMs": execution.late_ms,
        "finishedAt": execution.finished_at,
        "failureReason": execution.failure,
        "progress": {
            "published": execution.published(),
            "sent": counts.sent,
            "failed": counts.failed,
            "excluded": counts.excluded,
            "unknown": counts.unknown,
            "pending": counts.pending,
            // Recorded excluded without a message: the campaign stopped or the window passed.
            "unreached": execution.unreached(),
        },
    })))
}

fn schedule_id(text: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(text).map_err(|_| Problem::not_found("schedule-not-found", "No such schedule"))
}

pub(crate) async fn schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ExecutionsRead)?;
    let execution = state
        .store
        .schedule(&caller.sandbox, schedule_id(&id)?)
        .await?
        .ok_or_else(|| Problem::not_found("schedule-not-found", "No such schedule"))?;
    Ok(Json(schedule_view(&execution)))
}

/// Cancels a schedule before it fires: `{}`, as AJO answers; after it fired, 409.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ExecutionsWrite)?;
    match state.store.cancel_schedule(&caller.sandbox, schedule_id(&id)?, state.clock.now()).await? {
        CancelOutcome::Cancelled => Ok(Json(json!({}))),
        CancelOutcome::AlreadyFired => Err(Problem::new(
            StatusCode::CONFLICT,
            "schedule-already-fired",
            "The schedule has fired; it can no longer be cancelled",
        )
        .detail("stop the campaign to halt its fan-out: unpublished recipients are then excluded")),
        CancelOutcome::NotFound => Err(Problem::not_found("schedule-not-found", "No such schedule")),
    }
}

/// `GET /campaigns/{id}/schedules`: the campaign's scheduled audience executions.
pub(crate) async fn campaign_schedules(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsRead)?;
    let not_found = || Problem::not_found("campaign-not-found", "No such campaign");
    let campaign_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    state.store.get_campaign(&caller.sandbox, campaign_id).await?.ok_or_else(not_found)?;
    let schedules = state.store.campaign_schedules(&caller.sandbox, campaign_id).await?;
    Ok(Json(json!({ "items": schedules.iter().map(schedule_view).collect::<Vec<_>>() })))
}
