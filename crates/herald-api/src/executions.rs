//! The execution API, AJO-compatible: `POST /im/executions/unitary`, `POST
//! /im/executions/highthroughput` (the same body, for campaigns marked `highThroughput`:
//! external recipients only, no profiles) and, Herald's addition, `GET
//! /im/executions/{executionId}` to see what happened to each recipient.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::Scope;
use herald_core::execution::ExecutionRequest;
use herald_ingest::ratelimit::{Limit, LimitExceeded};
use herald_ingest::{ExecutionMode, IngestError};
use herald_telemetry::trace::valid_traceparent;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::json::{ApiJson, from_value};
use crate::problem::Problem;

pub(crate) fn problem_for(error: IngestError) -> Problem {
    match error {
        IngestError::RateLimited(exceeded) => limited(&exceeded),
        IngestError::CampaignNotFound => Problem::not_found("campaign-not-found", "No such campaign"),
        IngestError::AudienceNotFound => Problem::not_found("audience-not-found", "No such audience")
            .detail("create it with POST /audiences (a filter, or a list you upload), in this sandbox"),
        IngestError::NotLive(status) => {
            Problem::new(StatusCode::CONFLICT, "campaign-not-live", "The campaign is not live")
                .detail(format!("the campaign is {status}"))
                .with("campaignStatus", status.as_str())
        }
        IngestError::OutsideSchedule(status) => {
            Problem::new(StatusCode::CONFLICT, "campaign-outside-schedule", "The campaign is outside its schedule")
                .detail(if status == herald_core::CampaignStatus::Scheduled {
                    "its start date has not come yet"
                } else {
                    "its end date has passed"
                })
                .with("campaignStatus", status.as_str())
        }
        IngestError::NotHighThroughput => Problem::new(
            StatusCode::CONFLICT,
            "campaign-not-high-throughput",
            "The campaign is not a high-throughput campaign",
        )
        .detail(
            "POST /im/executions/highthroughput takes only campaigns marked `\"highThroughput\": true`: set it \
             in the campaign (PATCH /campaigns/{id}) and activate it again; its content may not use `profile.*` \
             (use `context.*`) and it may not create profiles. Or execute this campaign through POST \
             /im/executions/unitary",
        ),
        IngestError::Invalid(errors) => {
            let errors = errors.into_iter().map(|e| Problem::field_error(&e.pointer, e.detail)).collect();
            Problem::validation("Invalid execution request", errors)
        }
        IngestError::ProfilesNotFound(users) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "profile-not-found", "Unknown recipient profiles")
                .detail(
                    "the campaign does not create new profiles, and these recipients have none: store their \
                     profiles first (PUT /profiles/{namespace}/{userId}), or send to an address with a \
                     recipient of type external (an identity in the `email` or `phone` namespace needs no \
                     profile when it is a well-formed address for the campaign's channel)",
                )
                .with("userIds", users)
        }
        IngestError::KeyReused => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "This requestId was used with a different body",
        )
        .detail("use a new requestId for a new execution"),
        IngestError::InProgress(lease_left) => {
            Problem::new(StatusCode::CONFLICT, "request-in-progress", "This requestId is still being accepted")
                .detail("retry with the same requestId after Retry-After seconds to get its outcome")
                .retry_after(u32::try_from(lease_left.as_millis().div_ceil(1000)).unwrap_or(u32::MAX).max(1))
        }
        IngestError::Unavailable(reason) => {
            tracing::warn!(%reason, "execution not accepted: dependency unavailable");
            Problem::unavailable("a dependency is unavailable; nothing was accepted, retry with the same requestId")
        }
        IngestError::Internal(reason) => {
            tracing::error!(%reason, "execution failed");
            Problem::internal()
        }
    }
}

/// A 429 that names the limit, its value and when to come back.
fn limited(exceeded: &LimitExceeded) -> Problem {
    let allowed = exceeded.allowed;
    let problem = match exceeded.limit {
        Limit::SandboxRate => Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Over the sandbox's rate")
            .detail(format!("this sandbox may send to {allowed} recipients a second, all its API keys together")),
        Limit::KeyRate => Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Over the API key's rate")
            .detail(format!("an API key may send to {allowed} recipients a second")),
        Limit::DailyQuota(channel) => {
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded", "The sandbox's daily quota is used up")
                .detail(format!(
                    "this sandbox may send to {allowed} {channel} recipients a day; it resets at 00:00 UTC"
                ))
                .with("channel", channel.as_str())
        }
    };
    let seconds = u32::try_from(exceeded.retry_after.as_millis().div_ceil(1000)).unwrap_or(u32::MAX).max(1);
    problem.with("limit", exceeded.limit.name()).with("limitValue", allowed).retry_after(seconds)
}

/// Adds the body's ids to a problem, as AJO's `report.additionalContext` does.
pub(crate) fn with_ids(mut problem: Problem, body: &Value) -> Problem {
    for key in ["requestId", "campaignId"] {
        if let Some(id) = body.get(key).and_then(Value::as_str) {
            problem = problem.context_value(key, id);
        }
    }
    problem
}

/// `POST /im/executions/unitary`.
pub(crate) async fn execute(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    accept(&state, &caller, &headers, body, ExecutionMode::Unitary).await
}

/// `POST /im/executions/highthroughput`: the unitary body, scopes and idempotency.
pub(crate) async fn execute_high_throughput(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, Problem> {
    accept(&state, &caller, &headers, body, ExecutionMode::HighThroughput).await
}

async fn accept(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Value,
    mode: ExecutionMode,
) -> Result<Response, Problem> {
    let (ingest, request): (_, ExecutionRequest) = admit(state, caller, &body)?;
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).filter(|v| valid_traceparent(v));
    let accepted = ingest
        .execute(&caller.sandbox, &caller.key_id.to_string(), mode, &body, &request, state.clock.now(), traceparent)
        .await
        .map_err(|error| with_ids(problem_for(error), &body))?;
    let answer = json!({ "executionId": accepted.execution_id, "requestId": accepted.request_id, "createdAt": accepted.created_at });
    Ok(accepted_response(answer, accepted.replayed))
}

/// What every execution endpoint checks first, each problem carrying the body's ids: the key's
/// scope, the body's shape, and an ingest on this instance.
pub(crate) fn admit<'a, T: serde::de::DeserializeOwned>(
    state: &'a AppState,
    caller: &Caller,
    body: &Value,
) -> Result<(&'a herald_ingest::Ingest, T), Problem> {
    caller.require(Scope::ExecutionsWrite).map_err(|p| with_ids(p, body))?;
    let request: T = from_value(body).map_err(|p| with_ids(p, body))?;
    let ingest = state
        .ingest
        .as_deref()
        .ok_or_else(|| with_ids(Problem::unavailable("the execution API is not configured on this instance"), body))?;
    Ok((ingest, request))
}

/// A 202 with `answer`, marked `Idempotent-Replayed` when it answers a retry.
pub(crate) fn accepted_response(answer: Value, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(answer)).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

pub(crate) async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(execution_id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ExecutionsRead)?;
    let not_found = || Problem::not_found("execution-not-found", "No such execution");
    let id = Uuid::parse_str(&execution_id).map_err(|_| not_found())?;
    let (record, deliveries) = state.store.execution_status(&caller.sandbox, id).await?.ok_or_else(not_found)?;
    let recipients: Vec<Value> = record
        .recipients
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, summary)| {
            let delivery = deliveries.iter().find(|d| usize::try_from(d.recipient_index).ok() == Some(index));
            let mut entry = summary.clone();
            // Claimed by a worker or waiting in a retry tier: not decided yet.
            let status = delivery.map_or("queued", |d| if d.status.is_final() { d.status.as_str() } else { "queued" });
            entry["status"] = json!(status);
            entry["reason"] = json!(delivery.and_then(|d| d.reason.clone()));
            entry["attempts"] = json!(delivery.map_or(0, |d| d.attempts));
            // The provider's own words, redacted when stored: why a send failed or is retried.
            entry["lastError"] = json!(delivery.and_then(|d| d.last_error.clone()));
            entry["updatedAt"] = json!(delivery.map(|d| d.updated_at));
            // After the send, what the provider said (SES events): the status moves on from
            // `sent` to delivered, delayed, bounced, rejected or complained.
            if let Some((feedback, detail, at)) = delivery.and_then(|d| d.feedback.as_ref()) {
                entry["status"] = json!(feedback);
                entry["feedback"] = json!({ "status": feedback, "detail": detail, "at": at });
                if feedback == "bounced"
                    && let Some((kind, sub_kind)) = detail.as_deref().and_then(|d| d.split_once('/'))
                {
                    entry["bounce"] = json!({ "type": kind, "subType": sub_kind, "hard": kind == "Permanent" });
                }
            }
            entry
        })
        .collect();
    let waiting = recipients.iter().any(|r| r["status"] == "queued");
    let mut body = json!({
        "executionId": record.execution_id,
        "campaignId": record.campaign_id,
        "requestId": record.request_id,
        "createdAt": record.created_at,
        "acceptedAt": record.accepted_at,
        "state": record.state,
        "recipients": recipients,
    });
    if waiting {
        body["queue"] = queue_view(&state, &caller.sandbox, &record).await?;
    }
    Ok(Json(body))
}

/// For an execution still waiting: its queue as the broker holds it, and how long it has been
/// waiting. A `queued` status with no consumer on the queue means no worker is running for the
/// channel, which nothing else shows (the API is ready without one).
async fn queue_view(state: &AppState, sandbox: &str, record: &herald_store::ExecutionRecord) -> Result<Value, Problem> {
    let waited = record.accepted_at.map(|at| (state.clock.now() - at).num_seconds().max(0));
    // The ingest's campaign cache, as for an execution: no database round trip per poll.
    let Some(ingest) = state.ingest.as_ref() else {
        return Ok(json!({ "waitingSeconds": waited }));
    };
    let Some(campaign) = ingest.campaigns().get(sandbox, record.campaign_id).await? else {
        return Ok(json!({ "waitingSeconds": waited }));
    };
    let queue = ingest.broker().topology().queue_for(campaign.channel, sandbox);
    let mut view = json!({ "name": queue, "waitingSeconds": waited });
    match ingest.broker().queue_state(&queue).await {
        Some(held) => {
            // Not the queue's depth: a shard queue is shared by sandboxes, and its depth would tell
            // one tenant about another's traffic.
            view["consumers"] = json!(held.consumers);
            if held.consumers == 0 {
                view["warning"] = json!(format!(
                    "no worker is consuming this queue: start `herald worker` with the {} channel \
                     (HERALD_WORKER_CHANNELS) against the same broker and HERALD_AMQP_PREFIX",
                    campaign.channel
                ));
            }
        }
        None => view["warning"] = json!("the broker could not be asked about this queue"),
    }
    Ok(view)
}
