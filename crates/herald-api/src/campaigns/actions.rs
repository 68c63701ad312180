//! Lifecycle actions: activate (the review), stop, archive, duplicate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_core::lifecycle::{self, Action};
use herald_core::{Scope, review};
use herald_store::{CampaignChange, NewCampaign, StoreError};
use serde::Deserialize;
use serde_json::Value;

use super::{Refusal, campaign_not_found, campaign_view, change, load, name_taken, parse_id};
use crate::AppState;
use crate::auth::Caller;
use crate::json::{RawBody, parse};
use crate::problem::Problem;

/// How many `"NAME copy N"` names a duplicate tries before giving up.
const MAX_COPY_SUFFIX: usize = 50;

/// Reviews the draft and, when nothing blocks it, makes it the live version in one transaction.
pub(crate) async fn activate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsWrite)?;
    let uuid = parse_id(&id)?;
    let record = change(&state, &caller, uuid, |record, now| {
        lifecycle::check(Action::Activate, record.status(now), record.draft.is_some()).map_err(Refusal::Illegal)?;
        let draft = record.draft.as_ref().ok_or_else(|| Refusal::Problem(Problem::internal()))?;
        let problems = review::review(record.channel, &draft.definition, now);
        if !problems.is_empty() {
            let count = problems.len();
            return Err(Refusal::Problem(
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "review-failed", "The campaign did not pass review")
                    .detail(format!("{count} problem(s) block activation"))
                    .with("problems", serde_json::to_value(problems).unwrap_or_default()),
            ));
        }
        Ok(CampaignChange::Activate)
    })
    .await?
    .ok_or_else(|| campaign_not_found(&id))?;
    tracing::info!(campaign_id = %record.id, "campaign activated");
    Ok(Json(campaign_view(&record, state.clock.now())))
}

async fn simple(
    state: AppState,
    caller: Caller,
    id: String,
    action: Action,
    apply: CampaignChange,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsWrite)?;
    let uuid = parse_id(&id)?;
    let record = change(&state, &caller, uuid, |record, now| {
        lifecycle::check(action, record.status(now), record.draft.is_some()).map_err(Refusal::Illegal)?;
        Ok(apply)
    })
    .await?
    .ok_or_else(|| campaign_not_found(&id))?;
    tracing::info!(campaign_id = %record.id, action = action.as_str(), "campaign changed");
    Ok(Json(campaign_view(&record, state.clock.now())))
}

/// Stops a live or scheduled campaign for good.
pub(crate) async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    simple(state, caller, id, Action::Stop, CampaignChange::Stop).await
}

pub(crate) async fn archive(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    simple(state, caller, id, Action::Archive, CampaignChange::Archive).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DuplicateRequest {
    name: Option<String>,
}

/// Creates a new draft from the campaign's newest version. The body is optional: `{"name": ...}`.
pub(crate) async fn duplicate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require(Scope::CampaignsWrite)?;
    // No body (or `null`) means "pick a name for me".
    let request: DuplicateRequest = match parse::<Option<DuplicateRequest>>(&body) {
        _ if body.iter().all(u8::is_ascii_whitespace) => DuplicateRequest::default(),
        result => result?.unwrap_or_default(),
    };
    let source = load(&state, &caller, &id).await?;
    let definition = source.latest().map(|version| version.definition.clone()).unwrap_or_default();
    let names: Vec<String> = match request.name {
        Some(name) => {
            if let Some(error) = herald_core::campaign::check_name(&name) {
                return Err(Problem::validation(
                    "Invalid name",
                    vec![Problem::field_error(&error.pointer, error.detail)],
                ));
            }
            vec![name.trim().to_string()]
        }
        None => (1..=MAX_COPY_SUFFIX)
            .map(|n| if n == 1 { format!("{} copy", source.name) } else { format!("{} copy {n}", source.name) })
            .collect(),
    };
    let now = state.clock.now();
    for name in names {
        let new = NewCampaign {
            sandbox: caller.sandbox.clone(),
            name,
            description: source.description.clone(),
            channel: source.channel,
            definition: definition.clone(),
        };
        match state.store.create_campaign(&new, now).await {
            Ok(record) => return Ok((StatusCode::CREATED, Json(campaign_view(&record, now)))),
            Err(StoreError::Conflict(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(name_taken().campaign(source.id))
}
