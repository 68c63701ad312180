//! `/api-keys`: a sandbox's keys, for callers with `keys:admin`. A key can only grant, revoke or
//! rotate scopes it holds itself, so `keys:admin` alone is not a way to more rights. Another
//! sandbox's key is indistinguishable from a missing one (404). A secret is shown once, in the
//! answer that creates it, and that answer is never stored by caches.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::Scope;
use herald_store::api_keys::{ApiKeyInfo, KeyChange, NewApiKey};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::json::{ApiJson, ApiQuery};
use crate::problem::Problem;

const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListQuery {
    include_revoked: Option<bool>,
    after: Option<Uuid>,
    limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NewKeyBody {
    name: Option<String>,
    scopes: Vec<String>,
}

/// A key as listed: never the secret.
pub fn view(key: &ApiKeyInfo) -> Value {
    let scopes: Vec<&str> = key.scopes.iter().map(|scope| scope.as_str()).collect();
    json!({
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": scopes,
        "bootstrap": key.bootstrap,
        "createdAt": key.created_at,
        "lastUsedAt": key.last_used_at,
        "revokedAt": key.revoked_at,
        "replacedBy": key.replaced_by,
    })
}

fn not_found() -> Problem {
    Problem::not_found("api-key-not-found", "No such API key")
}

/// 403 for a change that would hand out, or act on, scopes the caller does not hold.
fn beyond_own_scopes(missing: &[Scope]) -> Problem {
    let names: Vec<&str> = missing.iter().map(|scope| scope.as_str()).collect();
    let first = names.first().copied().unwrap_or_default();
    Problem::new(StatusCode::FORBIDDEN, "forbidden", "The API key lacks a required scope")
        .detail(format!("a key can only grant, revoke or rotate scopes it holds itself; it lacks {}", names.join(", ")))
        .with("requiredScope", first)
        .with("missingScopes", names)
}

/// The id in the path; anything that is not a UUID (garbage, NUL, bad UTF-8) names no key.
fn key_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, Problem> {
    let Path(text) = path.map_err(|_| not_found())?;
    Uuid::parse_str(&text).map_err(|_| not_found())
}

/// An answer carrying a secret: 201, and never kept by a cache or a proxy.
fn secret_answer(created: &NewApiKey, replaces: Option<Uuid>) -> Response {
    let mut body = view(&created.info);
    body["key"] = json!(created.key);
    if let Some(replaces) = replaces {
        body["replaces"] = json!(replaces);
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn validation(pointer: &str, detail: impl Into<String>) -> Problem {
    Problem::validation("Invalid request body", vec![Problem::field_error(pointer, detail)])
}

fn parse_scopes(names: &[String]) -> Result<Vec<Scope>, Problem> {
    let mut scopes = Vec::new();
    for (index, name) in names.iter().enumerate() {
        if name == "all" {
            scopes.extend(Scope::ALL);
        } else {
            scopes.push(name.parse().map_err(|error: String| validation(&format!("/scopes/{index}"), error))?);
        }
    }
    if scopes.is_empty() {
        return Err(validation("/scopes", "at least one scope is required"));
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

fn parse_name(name: Option<String>) -> Result<Option<String>, Problem> {
    let Some(name) = name else { return Ok(None) };
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(validation("/name", format!("must be 1 to {MAX_NAME_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(validation("/name", "must not contain control characters"));
    }
    Ok(Some(name.to_string()))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::KeysAdmin)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::validation(
            "Invalid query string",
            vec![Problem::field_error("/limit", "must be 1 to 1000")],
        ));
    }
    let keys = state
        .store
        .list_api_keys(Some(&caller.sandbox), query.include_revoked.unwrap_or(false), query.after, limit)
        .await?;
    let next = (keys.len() as i64 == limit).then(|| keys.last().map(|key| key.id)).flatten();
    let items: Vec<Value> = keys
        .iter()
        .map(|key| {
            let mut item = view(key);
            item["current"] = json!(key.id == caller.key_id);
            item
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<Response, Problem> {
    caller.require(Scope::KeysAdmin)?;
    let scopes = parse_scopes(&body.scopes)?;
    let name = parse_name(body.name)?;
    let missing = Scope::missing_from(&scopes, &caller.scopes);
    if !missing.is_empty() {
        return Err(beyond_own_scopes(&missing));
    }
    let created = state.store.create_api_key_info(&caller.sandbox, &scopes, name.as_deref(), state.clock.now()).await?;
    tracing::info!(key_id = %created.info.id, by = %caller.key_id, "api key created");
    Ok(secret_answer(&created, None))
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::KeysAdmin)?;
    let id = key_id(path)?;
    match state.store.revoke_api_key(Some(&caller.sandbox), id, Some(&caller.scopes), state.clock.now()).await? {
        KeyChange::Done(key) => {
            state.keys.forget(id);
            tracing::info!(key_id = %id, by = %caller.key_id, "api key revoked");
            Ok(Json(view(&key)))
        }
        KeyChange::Exceeds(missing) => Err(beyond_own_scopes(&missing)),
        KeyChange::NotFound | KeyChange::Revoked => Err(not_found()),
    }
}

pub(crate) async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Problem> {
    caller.require(Scope::KeysAdmin)?;
    let id = key_id(path)?;
    match state.store.rotate_api_key(Some(&caller.sandbox), id, Some(&caller.scopes), state.clock.now()).await? {
        KeyChange::Done(created) => {
            state.keys.forget(id);
            tracing::info!(key_id = %id, new_key_id = %created.info.id, by = %caller.key_id, "api key rotated");
            Ok(secret_answer(&created, Some(id)))
        }
        KeyChange::Revoked => Err(Problem::new(StatusCode::CONFLICT, "api-key-revoked", "The API key is revoked")
            .detail("a revoked key cannot be rotated; create a new one")),
        KeyChange::Exceeds(missing) => Err(beyond_own_scopes(&missing)),
        KeyChange::NotFound => Err(not_found()),
    }
}
