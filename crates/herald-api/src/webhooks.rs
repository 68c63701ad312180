//! `PUT`, `GET` and `DELETE /webhooks/feedback`: a sandbox's customer feedback webhook (AJO's
//! feedback webhook). The signing secret is generated here and shown once, in the answer that
//! creates it (or rotates it). The URL is checked against the SSRF rules before it is stored
//! ([`herald_core::feedback::ssrf`]); the worker checks every address again when it delivers.

use std::net::IpAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use herald_core::feedback::ssrf;
use herald_core::{Channel, Scope};
use herald_store::WebhookConfig;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::json::ApiJson;
use crate::problem::Problem;

/// The events a webhook can be sent, AJO's feedback statuses.
pub const EVENT_TYPES: [&str; 6] = ["sent", "delivered", "bounce", "complaint", "error", "excluded"];
const MAX_URL_LENGTH: usize = 2_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WebhookDocument {
    url: String,
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    /// Replace the signing secret (the new one is in the answer, once).
    #[serde(default)]
    rotate_secret: bool,
}

fn view(config: &WebhookConfig) -> Value {
    json!({
        "url": config.url,
        "eventTypes": config.event_types,
        "channels": config.channels,
        "enabled": config.enabled,
        "disabledReason": config.disabled_reason,
        "disabledAt": config.disabled_at,
        "createdAt": config.created_at,
        "updatedAt": config.updated_at,
    })
}

fn refused(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "webhook-url-refused", "This webhook URL cannot be used").detail(detail)
}

fn new_secret() -> Result<String, Problem> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Problem::internal())?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// A list of known names, each once, in the order given; all of them when absent.
fn names(given: Option<Vec<String>>, known: &[&str], pointer: &str) -> Result<Vec<String>, Problem> {
    let Some(given) = given else { return Ok(known.iter().map(|n| n.to_string()).collect()) };
    let mut out: Vec<String> = Vec::new();
    for name in given {
        if !known.contains(&name.as_str()) {
            return Err(Problem::validation(
                "Unknown name",
                vec![Problem::field_error(pointer, format!("each one of {}", known.join(", ")))],
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(Problem::validation("Empty list", vec![Problem::field_error(pointer, "at least one")]));
    }
    Ok(out)
}

/// The SSRF rules: http(s), no credentials in the URL, and every address the host has public
/// (or in `HERALD_WEBHOOK_ALLOWED_NETWORKS`).
/// Returns the URL as it will be requested (normalised), which is what is stored and shown.
async fn check_url(state: &AppState, url: &str) -> Result<String, Problem> {
    if url.len() > MAX_URL_LENGTH {
        return Err(refused(format!("at most {MAX_URL_LENGTH} characters")));
    }
    // The URL parser would drop these silently: what is stored must be what is requested.
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refused("no spaces or control characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| refused("not an absolute URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refused("only http and https URLs"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refused("no credentials in the URL: verify the signature instead"));
    }
    let host = parsed.host_str().ok_or_else(|| refused("no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let allowed = &state.config.webhook_allowed_networks;
    let addresses: Vec<IpAddr> = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let lookup = tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host((host, port))).await;
            match lookup {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => return Err(refused("the host does not resolve")),
            }
        }
    };
    if addresses.is_empty() {
        return Err(refused("the host does not resolve"));
    }
    if let Some(internal) = addresses.iter().find(|ip| !ssrf::allowed(**ip, allowed)) {
        tracing::warn!(sandbox_refused_ip = %internal, "a webhook URL resolving to a non-public address was refused");
        return Err(refused(
            "the host resolves to an address that is not public (loopback, private, link-local, ...); the \
             operator can allow such networks with HERALD_WEBHOOK_ALLOWED_NETWORKS",
        ));
    }
    Ok(parsed.to_string())
}

pub(crate) async fn put(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(document): ApiJson<WebhookDocument>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    caller.require(Scope::KeysAdmin)?;
    let event_types = names(document.event_types, &EVENT_TYPES, "/eventTypes")?;
    let channels: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
    let channels = names(document.channels, &channels, "/channels")?;
    let url = check_url(&state, &document.url).await?;
    let now = state.clock.now();
    let fields = (url.as_str(), event_types.as_slice(), channels.as_slice());
    if !document.rotate_secret
        && let Some(updated) = state.store.put_webhook(&caller.sandbox, fields, None, now).await?
    {
        return Ok((StatusCode::OK, Json(view(&updated))));
    }
    let secret = new_secret()?;
    let created =
        state.store.put_webhook(&caller.sandbox, fields, Some(&secret), now).await?.ok_or_else(Problem::internal)?;
    let mut body = view(&created);
    // Shown this once: Herald keeps it to sign, and never shows it again.
    body["secret"] = json!(secret);
    let status = if created.created_at == created.updated_at { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(body)))
}

pub(crate) async fn read(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, Problem> {
    caller.require(Scope::KeysAdmin)?;
    let config = state.store.get_webhook(&caller.sandbox).await?;
    config.map(|c| Json(view(&c))).ok_or_else(not_found)
}

pub(crate) async fn delete(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, Problem> {
    caller.require(Scope::KeysAdmin)?;
    if state.store.delete_webhook(&caller.sandbox).await? { Ok(StatusCode::NO_CONTENT) } else { Err(not_found()) }
}

fn not_found() -> Problem {
    Problem::not_found("webhook-not-found", "No feedback webhook is configured")
}
