//! `PUT/GET /profiles/{namespace}/{userId}`: the recipient data campaigns personalise with.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_core::Scope;
use herald_core::address::{is_valid_e164, is_valid_email};
use herald_store::{Profile, PushToken};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::json::ApiJson;
use crate::problem::Problem;

const MAX_IDENTIFIER_LENGTH: usize = 256;
const MAX_PUSH_TOKENS: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ProfileDocument {
    #[serde(default)]
    attributes: Map<String, Value>,
    email_address: Option<String>,
    phone_number: Option<String>,
    #[serde(default)]
    push_tokens: Vec<PushToken>,
}

fn view(profile: &Profile) -> Value {
    json!({
        "namespace": profile.namespace,
        "userId": profile.user_id,
        "attributes": profile.attributes,
        "emailAddress": profile.email_address,
        "phoneNumber": profile.phone_number,
        "pushTokens": profile.push_tokens,
        "createdAt": profile.created_at,
        "updatedAt": profile.updated_at,
    })
}

fn check_identifiers(namespace: &str, user_id: &str) -> Vec<Value> {
    let mut errors = Vec::new();
    for (pointer, value) in [("/namespace", namespace), ("/userId", user_id)] {
        if value.is_empty() || value.len() > MAX_IDENTIFIER_LENGTH {
            errors.push(Problem::field_error(pointer, format!("must be 1 to {MAX_IDENTIFIER_LENGTH} bytes")));
        }
    }
    errors
}

pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, user_id)): Path<(String, String)>,
    ApiJson(document): ApiJson<ProfileDocument>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require(Scope::ProfilesWrite)?;
    let mut errors = check_identifiers(&namespace, &user_id);
    if let Some(address) = document.email_address.as_deref().filter(|address| !is_valid_email(address)) {
        errors.push(Problem::field_error(
            "/emailAddress",
            format!("`{}` is not an email address", herald_core::address::mask(address)),
        ));
    }
    if document.phone_number.as_deref().is_some_and(|number| !is_valid_e164(number)) {
        errors.push(Problem::field_error("/phoneNumber", "must be an E.164 number such as +33612345678"));
    }
    if document.push_tokens.len() > MAX_PUSH_TOKENS {
        errors.push(Problem::field_error("/pushTokens", format!("at most {MAX_PUSH_TOKENS} tokens")));
    }
    for (index, token) in document.push_tokens.iter().enumerate() {
        if token.token.trim().is_empty() || token.platform.trim().is_empty() {
            errors.push(Problem::field_error(&format!("/pushTokens/{index}"), "token and platform must not be empty"));
        }
    }
    if !errors.is_empty() {
        return Err(Problem::validation("Invalid profile", errors));
    }
    let now = state.clock.now();
    let profile = Profile {
        namespace,
        user_id,
        attributes: document.attributes,
        email_address: document.email_address,
        phone_number: document.phone_number,
        push_tokens: document.push_tokens,
        created_at: now,
        updated_at: now,
    };
    let (stored, created) = state.store.put_profile(&caller.sandbox, &profile, now).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view(&stored))))
}

pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, user_id)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::ProfilesRead)?;
    let profile = state.store.get_profile(&caller.sandbox, &namespace, &user_id).await?;
    profile.map(|profile| Json(view(&profile))).ok_or_else(|| {
        Problem::not_found("profile-not-found", "No such profile")
            .detail(format!("no profile in namespace `{namespace}` with this user id"))
    })
}
