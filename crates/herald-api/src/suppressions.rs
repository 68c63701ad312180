//! The sandbox's suppression list: `GET /suppressions?channel=&cursor=&limit=`, and `GET`, `PUT`
//! and `DELETE /suppressions/{channel}/{address}`. Hard bounces, complaints and SMS opt-outs add
//! entries themselves; operators add (`manual`) and remove them here. Addresses are stored the
//! way the send path looks them up: emails lower-cased, phone numbers E.164.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use herald_core::feedback::{SuppressionReason, suppression_address};
use herald_core::{Channel, Scope};
use herald_store::Suppression;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::json::{ApiJson, ApiQuery};
use crate::problem::Problem;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;
const MAX_DETAIL: usize = 500;

fn view(entry: &Suppression) -> Value {
    json!({
        "channel": entry.channel,
        "address": entry.address,
        "reason": entry.reason.as_str(),
        "source": entry.source,
        "detail": entry.detail,
        "createdAt": entry.created_at,
        "updatedAt": entry.updated_at,
    })
}

fn channel_of(name: &str) -> Result<Channel, Problem> {
    match Channel::parse(name) {
        Some(channel @ (Channel::Email | Channel::Sms)) => Ok(channel),
        _ => Err(Problem::validation(
            "Not a channel with a suppression list",
            vec![Problem::field_error("/channel", "`email` or `sms`")],
        )),
    }
}

/// The channel and the address as the list holds it.
fn key(channel: &str, address: &str) -> Result<(Channel, String), Problem> {
    let channel = channel_of(channel)?;
    let address = suppression_address(channel, address).ok_or_else(|| {
        let detail = match channel {
            Channel::Sms => "a phone number in E.164 form (+ and 8 to 15 digits)",
            _ => "an email address",
        };
        Problem::validation("Not an address of this channel", vec![Problem::field_error("/address", detail)])
    })?;
    Ok((channel, address))
}

fn cursor_of(entry: &Suppression) -> String {
    let raw = format!("{}\n{}", entry.channel, entry.address);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_cursor(cursor: &str) -> Result<(Channel, String), Problem> {
    let bad =
        || Problem::validation("Invalid cursor", vec![Problem::field_error("/cursor", "use the `next` of a page")]);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (channel, address) = raw.split_once('\n').ok_or_else(bad)?;
    // Only what a page's `next` can hold: a listed channel, an address without control characters.
    let channel = channel_of(channel).map_err(|_| bad())?;
    if address.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok((channel, address.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    channel: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ProfilesRead)?;
    let channel = query.channel.as_deref().map(channel_of).transpose()?;
    let after = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::validation(
            "Invalid limit",
            vec![Problem::field_error("/limit", format!("between 1 and {MAX_LIMIT}"))],
        ));
    }
    let entries = state.store.list_suppressions(&caller.sandbox, channel, after, limit + 1).await?;
    let more = entries.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let page: Vec<&Suppression> = entries.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)).collect();
    let next = if more { page.last().map(|entry| cursor_of(entry)) } else { None };
    Ok(Json(json!({ "items": page.into_iter().map(view).collect::<Vec<_>>(), "next": next })))
}

pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((channel, address)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ProfilesRead)?;
    let (channel, address) = key(&channel, &address)?;
    let entry = state.store.get_suppression(&caller.sandbox, channel, &address).await?;
    entry.map(|entry| Json(view(&entry))).ok_or_else(not_found)
}

fn not_found() -> Problem {
    Problem::not_found("suppression-not-found", "The address is not suppressed")
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PutDocument {
    /// `manual` unless said otherwise.
    reason: Option<String>,
    detail: Option<String>,
}

pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path((channel, address)): Path<(String, String)>,
    ApiJson(document): ApiJson<PutDocument>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ProfilesWrite)?;
    let (channel, address) = key(&channel, &address)?;
    let reason = match document.reason.as_deref() {
        None => SuppressionReason::Manual,
        Some(name) => SuppressionReason::parse(name).ok_or_else(|| {
            Problem::validation(
                "Unknown reason",
                vec![Problem::field_error("/reason", "`manual`, `hard-bounce`, `complaint` or `opted-out`")],
            )
        })?,
    };
    if document.detail.as_ref().is_some_and(|detail| detail.len() > MAX_DETAIL) {
        return Err(Problem::validation(
            "Detail too long",
            vec![Problem::field_error("/detail", format!("at most {MAX_DETAIL} bytes"))],
        ));
    }
    let entry = state
        .store
        .put_suppression(&caller.sandbox, channel, &address, reason, document.detail.as_deref(), state.clock.now())
        .await?;
    Ok(Json(view(&entry)))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((channel, address)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    caller.require(Scope::ProfilesWrite)?;
    let (channel, address) = key(&channel, &address)?;
    if state.store.delete_suppression(&caller.sandbox, channel, &address).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
