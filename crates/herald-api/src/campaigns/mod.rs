//! The campaign management API: create, read, list, patch, delete; lifecycle actions live in
//! [`actions`], the cURL sample and preview in [`tools`].

pub(crate) mod actions;
mod document;
pub(crate) mod tools;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_core::lifecycle::{self, Action};
use herald_core::{CampaignStatus, Scope};
use herald_store::{CampaignChange, CampaignRecord, ChangeError, NewCampaign, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::json::{ApiJson, ApiQuery, parse};
use crate::problem::Problem;
pub(crate) use document::{CampaignDocument, campaign_view, merge_patch};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;

/// Why a campaign change was refused, as decided under the row lock.
#[derive(Debug)]
pub(crate) enum Refusal {
    Illegal(lifecycle::IllegalTransition),
    Problem(Problem),
}

impl Refusal {
    pub(crate) fn into_problem(self, id: Uuid) -> Problem {
        match self {
            Refusal::Illegal(illegal) => illegal_transition(illegal, id),
            Refusal::Problem(problem) => problem.campaign(id),
        }
    }
}

pub(crate) fn illegal_transition(illegal: lifecycle::IllegalTransition, id: Uuid) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "illegal-transition",
        format!("Cannot {} a {} campaign", illegal.action.as_str(), illegal.status),
    )
    .detail(illegal.to_string())
    .with("campaignStatus", illegal.status.as_str())
    .with("action", illegal.action.as_str())
    .campaign(id)
}

pub(crate) fn campaign_not_found(id: &str) -> Problem {
    Problem::not_found("campaign-not-found", "No such campaign").campaign(id)
}

/// Campaign ids in paths are UUIDs; anything else cannot name a campaign.
pub(crate) fn parse_id(id: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(id).map_err(|_| campaign_not_found(id))
}

pub(crate) async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<CampaignRecord, Problem> {
    let uuid = parse_id(id)?;
    state.store.get_campaign(&caller.sandbox, uuid).await?.ok_or_else(|| campaign_not_found(id))
}

/// Runs a locked change and maps its failures to problems.
pub(crate) async fn change(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    decide: impl FnOnce(&CampaignRecord, chrono::DateTime<chrono::Utc>) -> Result<CampaignChange, Refusal>,
) -> Result<Option<CampaignRecord>, Problem> {
    let now = state.clock.now();
    match state.store.change_campaign(&caller.sandbox, id, now, |record| decide(record, now)).await {
        Ok(record) => Ok(record),
        Err(ChangeError::NotFound) => Err(campaign_not_found(&id.to_string())),
        Err(ChangeError::Refused(refusal)) => Err(refusal.into_problem(id)),
        Err(ChangeError::Store(StoreError::Conflict(_))) => Err(name_taken()),
        Err(ChangeError::Store(error)) => Err(error.into()),
    }
}

pub(crate) fn name_taken() -> Problem {
    Problem::new(StatusCode::CONFLICT, "campaign-name-taken", "A campaign with this name already exists in the sandbox")
}

fn invalid(errors: Vec<herald_core::campaign::FieldError>) -> Problem {
    let errors = errors.into_iter().map(|error| Problem::field_error(&error.pointer, error.detail)).collect();
    Problem::validation("Invalid campaign", errors)
}

pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(document): ApiJson<CampaignDocument>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require(Scope::CampaignsWrite)?;
    let errors = document.check();
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let new = NewCampaign {
        sandbox: caller.sandbox.clone(),
        name: document.name.trim().to_string(),
        description: document.description.clone(),
        channel: document.channel,
        definition: document.definition(),
    };
    let now = state.clock.now();
    let record = state.store.create_campaign(&new, now).await.map_err(|error| match error {
        StoreError::Conflict(_) => name_taken(),
        other => other.into(),
    })?;
    Ok((StatusCode::CREATED, Json(campaign_view(&record, now))))
}

pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsRead)?;
    let record = load(&state, &caller, &id).await?;
    Ok(Json(campaign_view(&record, state.clock.now())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    after: Option<Uuid>,
}

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsRead)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(CampaignStatus::parse(text).ok_or_else(|| {
            let known: Vec<&str> = CampaignStatus::ALL.iter().map(|s| s.as_str()).collect();
            Problem::validation(
                "Invalid query string",
                vec![Problem::field_error("/status", format!("must be one of {}", known.join(", ")))],
            )
        })?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::validation(
            "Invalid query string",
            vec![Problem::field_error("/limit", format!("must be 1 to {MAX_PAGE}"))],
        ));
    }
    let now = state.clock.now();
    let records = state.store.list_campaigns(&caller.sandbox, status, now, query.after, limit).await?;
    let next = (records.len() as i64 == limit).then(|| records.last().map(|record| record.id)).flatten();
    let items: Vec<Value> = records.iter().map(|record| campaign_view(record, now)).collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

pub(crate) async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<Value>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsWrite)?;
    let uuid = parse_id(&id)?;
    if !patch.is_object() {
        return Err(Problem::validation(
            "Invalid patch",
            vec![Problem::field_error("", "a merge patch must be a JSON object")],
        ));
    }
    let record = change(&state, &caller, uuid, |record, now| {
        lifecycle::check(Action::Patch, record.status(now), record.draft.is_some()).map_err(Refusal::Illegal)?;
        let current = CampaignDocument::of_latest(record);
        let mut merged = serde_json::to_value(&current).map_err(|_| Refusal::Problem(Problem::internal()))?;
        merge_patch(&mut merged, &patch);
        let bytes = serde_json::to_vec(&merged).map_err(|_| Refusal::Problem(Problem::internal()))?;
        let document: CampaignDocument = parse(&bytes).map_err(Refusal::Problem)?;
        if document.channel != record.channel {
            return Err(Refusal::Problem(Problem::validation(
                "Invalid patch",
                vec![Problem::field_error("/channel", "the channel of a campaign cannot change; duplicate it instead")],
            )));
        }
        let errors = document.check();
        if !errors.is_empty() {
            return Err(Refusal::Problem(invalid(errors)));
        }
        Ok(CampaignChange::EditDraft {
            name: document.name.trim().to_string(),
            description: document.description.clone(),
            definition: Box::new(document.definition()),
        })
    })
    .await?
    .ok_or_else(|| campaign_not_found(&id))?;
    Ok(Json(campaign_view(&record, state.clock.now())))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    caller.require(Scope::CampaignsWrite)?;
    let uuid = parse_id(&id)?;
    change(&state, &caller, uuid, |record, now| {
        lifecycle::check(Action::Delete, record.status(now), record.draft.is_some()).map_err(Refusal::Illegal)?;
        Ok(CampaignChange::Delete)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
