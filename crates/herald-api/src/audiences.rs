//! Audiences of the sandbox: `POST /audiences` (a filter over stored profiles, computed at once,
//! or an empty list), `PUT /audiences/{id}/members` (a list's members as NDJSON or CSV, streamed
//! into one transaction), `GET /audiences`, `GET` and `DELETE /audiences/{id}`. Reading needs
//! `profiles:read`; changing, `profiles:write` (an audience is a view of profile data).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use herald_core::Scope;
use herald_core::audience::filter;
use herald_core::audience::members::{ListFormat, ListReader};
use herald_store::{AudienceKind, AudienceRecord, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::json::{ApiJson, ApiQuery, from_value};
use crate::problem::Problem;

/// An upload is refused (413) past this many members, lines (blank ones included) or bytes.
pub const MAX_UPLOAD_MEMBERS: u64 = 10_000_000;
pub const MAX_UPLOAD_LINES: u64 = 20_000_000;
pub const MAX_UPLOAD_BYTES: u64 = 1 << 30;
const MAX_NAME: usize = 128;
/// An upload holds a database connection from its first byte to its last, so a process runs
/// few at once: slow or many uploads must not take the connections other requests need.
pub(crate) const CONCURRENT_UPLOADS: usize = 2;
/// A client that sends nothing for this long loses its upload (and its connection).
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewAudience {
    name: String,
    #[serde(default)]
    filter: Option<Value>,
    /// `list`, or (with a filter) `filter`; inferred when absent.
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

pub(crate) fn view(audience: &AudienceRecord) -> Value {
    json!({
        "id": audience.id,
        "name": audience.name,
        "type": audience.kind.as_str(),
        "filter": audience.filter,
        "size": audience.size,
        "computedAt": audience.computed_at,
        "createdAt": audience.created_at,
        "updatedAt": audience.updated_at,
    })
}

fn not_found() -> Problem {
    Problem::not_found("audience-not-found", "No such audience")
}

fn audience_id(text: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(text).map_err(|_| not_found())
}

pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require(Scope::ProfilesWrite)?;
    let new: NewAudience = from_value(&body)?;
    let mut errors = Vec::new();
    if new.name.trim().is_empty() || new.name.len() > MAX_NAME || new.name.chars().any(char::is_control) {
        errors.push(Problem::field_error("/name", format!("1 to {MAX_NAME} bytes, no control characters")));
    }
    let kind = match (new.kind.as_deref(), &new.filter) {
        (None | Some("filter"), Some(_)) => AudienceKind::Filter,
        (None | Some("list"), None) => AudienceKind::List,
        (Some("filter"), None) => {
            errors.push(Problem::field_error("/filter", "a filter audience needs its filter"));
            AudienceKind::Filter
        }
        (Some("list"), Some(_)) => {
            errors.push(Problem::field_error("/filter", "a list audience has no filter: upload its members"));
            AudienceKind::List
        }
        (Some(_), _) => {
            errors.push(Problem::field_error("/type", "`filter` or `list`"));
            AudienceKind::List
        }
    };
    let compiled = match (&new.filter, kind) {
        (Some(raw), AudienceKind::Filter) => match filter::parse(raw, "/filter") {
            Ok(parsed) => Some(parsed.compile(4)),
            Err(problems) => {
                errors.extend(problems.into_iter().map(|e| Problem::field_error(&e.pointer, e.detail)));
                None
            }
        },
        _ => None,
    };
    if !errors.is_empty() {
        return Err(Problem::validation("Invalid audience", errors));
    }
    let filter = new.filter.as_ref().zip(compiled.as_ref());
    let audience =
        state.store.create_audience(&caller.sandbox, new.name.trim(), filter, state.clock.now()).await.map_err(
            |error| match error {
                StoreError::Conflict(detail) => {
                    Problem::new(StatusCode::CONFLICT, "audience-name-taken", "An audience of this name exists")
                        .detail(detail)
                }
                other => other.into(),
            },
        )?;
    Ok((StatusCode::CREATED, Json(view(&audience))))
}

pub(crate) async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ProfilesRead)?;
    let audiences = state.store.list_audiences(&caller.sandbox).await?;
    Ok(Json(json!({ "items": audiences.iter().map(view).collect::<Vec<_>>() })))
}

pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ProfilesRead)?;
    let audience = state.store.get_audience(&caller.sandbox, audience_id(&id)?).await?.ok_or_else(not_found)?;
    Ok(Json(view(&audience)))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    caller.require(Scope::ProfilesWrite)?;
    match state.store.delete_audience(&caller.sandbox, audience_id(&id)?).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(not_found()),
        Err(StoreError::Conflict(detail)) => {
            Err(Problem::new(StatusCode::CONFLICT, "audience-in-use", "The audience is in use").detail(detail))
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    /// The namespace of members that do not name one.
    #[serde(default)]
    namespace: Option<String>,
}

fn bad_line(number: u64, detail: &str) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-audience-member", "An uploaded line is not a member")
        .detail(format!("line {number}: {detail}; nothing was stored"))
        .with("line", number)
}

/// `PUT /audiences/{id}/members`: replaces a list's members. The body is read as it arrives,
/// a line at a time, straight into one `COPY`; the first bad line refuses it all.
pub(crate) async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ProfilesWrite)?;
    let id = audience_id(&id)?;
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = ListFormat::from_content_type(content_type).ok_or_else(|| {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Upload NDJSON or CSV")
            .detail("send Content-Type: application/x-ndjson (one {\"userId\", \"namespace\", \"type\"} a line) or text/csv (a header line, then one member a line)")
    })?;
    let _turn = state.uploads.clone().try_acquire_owned().map_err(|_| {
        Problem::new(StatusCode::TOO_MANY_REQUESTS, "uploads-busy", "Other uploads are running")
            .detail(format!("this API process runs {CONCURRENT_UPLOADS} uploads at once; retry shortly"))
            .retry_after(5)
    })?;
    let mut reader = ListReader::new(format, query.namespace)
        .map_err(|detail| Problem::validation("Invalid upload", vec![Problem::field_error("/namespace", detail)]))?;
    let upload = state.store.begin_member_upload(&caller.sandbox, id).await.map_err(|error| match error {
        StoreError::Conflict(detail) => {
            Problem::new(StatusCode::CONFLICT, "audience-not-uploadable", "Members cannot be uploaded now")
                .detail(detail)
        }
        other => other.into(),
    })?;
    let Some(mut upload) = upload else { return Err(not_found()) };
    let mut stream = body.into_data_stream();
    let mut pending: Vec<u8> = Vec::new();
    let (mut lines, mut bytes) = (0_u64, 0_u64);
    let mut finished = false;
    while !finished {
        let next = tokio::time::timeout(UPLOAD_IDLE, stream.next()).await.map_err(|_| {
            Problem::new(StatusCode::REQUEST_TIMEOUT, "upload-stalled", "The upload stalled")
                .detail(format!("nothing arrived for {} s; nothing was stored", UPLOAD_IDLE.as_secs()))
        })?;
        let chunk = match next {
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) => {
                return Err(Problem::new(StatusCode::BAD_REQUEST, "body-unreadable", "The body ended early"));
            }
            None => {
                finished = true;
                axum::body::Bytes::from_static(b"\n")
            }
        };
        bytes += chunk.len() as u64;
        if bytes > MAX_UPLOAD_BYTES {
            return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "The upload is too large")
                .detail(format!("at most {MAX_UPLOAD_BYTES} bytes")));
        }
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            if finished && line.is_empty() && start == pending.len() {
                break;
            }
            lines += 1;
            if lines > MAX_UPLOAD_LINES {
                return Err(bad_line(lines, &format!("an upload holds at most {MAX_UPLOAD_LINES} lines")));
            }
            match reader.line(line) {
                Ok(Some(_)) if upload.rows() >= MAX_UPLOAD_MEMBERS => {
                    return Err(Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Too many members")
                        .detail(format!("a list holds at most {MAX_UPLOAD_MEMBERS} members; nothing was stored")));
                }
                Ok(Some(member)) => upload.write(&member).await?,
                Ok(None) => {}
                Err(detail) => return Err(bad_line(lines, &detail)),
            }
        }
        pending.drain(..start);
        if pending.len() > herald_core::audience::members::MAX_LINE_BYTES {
            return Err(bad_line(lines + 1, "longer than the longest line allowed"));
        }
    }
    if reader.lacks_header() {
        return Err(bad_line(1, "a CSV upload starts with its header line (userId, namespace, type)"));
    }
    let summary = upload.finish(state.clock.now()).await?;
    let audience = state.store.get_audience(&caller.sandbox, id).await?.ok_or_else(not_found)?;
    let mut answer = view(&audience);
    answer["rows"] = json!(summary.rows);
    answer["duplicates"] = json!(summary.rows.saturating_sub(u64::try_from(summary.size).unwrap_or(0)));
    Ok(Json(answer))
}
