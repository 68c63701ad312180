//! Helpers for campaign owners: the ready cURL sample of the execution API and the preview.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_core::Scope;
use herald_core::template::{CompiledContent, TemplateError};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::load;
use crate::AppState;
use crate::auth::Caller;
use crate::json::{ApiJson, ApiQuery};
use crate::problem::Problem;

fn template_problem(errors: Vec<TemplateError>, id: uuid::Uuid) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "template-error", "The content does not render")
        .with("errors", serde_json::to_value(errors).unwrap_or_default())
        .campaign(id)
}

/// Splits `person.name.firstName` into nested objects ending in a placeholder string; a path
/// with brackets is kept as one key, since its shape cannot be guessed.
fn insert_placeholder(target: &mut Map<String, Value>, path: &str) {
    let segments: Vec<&str> = if path.contains('[') { vec![path] } else { path.split('.').collect() };
    let mut cursor = target;
    for (index, segment) in segments.iter().enumerate() {
        if index + 1 == segments.len() {
            cursor.entry(segment.to_string()).or_insert_with(|| Value::String(format!("<{path}>")));
            return;
        }
        let entry = cursor.entry(segment.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            return;
        }
        let Value::Object(next) = entry else { return };
        cursor = next;
    }
}

/// Quotes `text` for a POSIX shell inside single quotes.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

pub(crate) async fn curl(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsRead)?;
    let record = load(&state, &caller, &id).await?;
    let live = record.live.as_ref().ok_or_else(|| {
        Problem::new(StatusCode::CONFLICT, "campaign-not-live", "The campaign has no live version yet")
            .detail("activate the campaign to get its execution sample")
            .with("campaignStatus", record.status(state.clock.now()).as_str())
            .campaign(record.id)
    })?;
    let compiled =
        CompiledContent::compile(&live.definition.content).map_err(|errors| template_problem(errors, record.id))?;
    let mut context_keys = BTreeSet::new();
    let mut profile_paths = BTreeSet::new();
    for (_, analysis) in compiled.analyse() {
        for variable in analysis.variables {
            let Some(key) = variable.first_key().map(str::to_string) else {
                continue;
            };
            match variable.root() {
                "context" => {
                    context_keys.insert(key);
                }
                _ => {
                    let path = variable.path.trim_start_matches("profile").trim_start_matches('.').to_string();
                    profile_paths.insert(path);
                }
            }
        }
    }
    let mut profile = Map::new();
    for path in &profile_paths {
        insert_placeholder(&mut profile, path);
    }
    let context: Map<String, Value> =
        context_keys.iter().map(|key| (key.clone(), Value::String(format!("<{key}>")))).collect();
    let namespace = live.definition.identity_namespace.clone().unwrap_or_else(|| "<namespace>".into());
    let mut recipient = json!({ "type": "aep", "namespace": namespace, "userId": "<userId>" });
    if !profile.is_empty() {
        recipient["profile"] = Value::Object(profile);
    }
    if !context.is_empty() {
        recipient["context"] = Value::Object(context);
    }
    let body = json!({ "requestId": "<unique request id>", "campaignId": record.id, "recipients": [recipient] });
    let pretty = serde_json::to_string_pretty(&body).unwrap_or_default();
    let url = format!("{}/im/executions/unitary", state.config.public_url.trim_end_matches('/'));
    let command = format!(
        "curl -X POST {} \\\n  -H \"Authorization: Bearer $HERALD_API_KEY\" \\\n  -H 'Content-Type: application/json' \\\n  -d {}",
        shell_quote(&url),
        shell_quote(&pretty)
    );
    Ok(Json(json!({
        "campaignId": record.id,
        "versionId": live.id,
        "contextVariables": context_keys,
        "profileVariables": profile_paths,
        "body": body,
        "command": command,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PreviewRequest {
    #[serde(default)]
    profile: Map<String, Value>,
    #[serde(default)]
    context: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviewQuery {
    /// `draft` or `live`; by default the draft when there is one, else the live version.
    version: Option<String>,
}

/// Renders the draft (or, without one, the live version) with the sample profile and context.
pub(crate) async fn preview(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PreviewQuery>,
    ApiJson(request): ApiJson<PreviewRequest>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsRead)?;
    let bad_query =
        |detail: String| Problem::validation("Invalid query string", vec![Problem::field_error("/version", detail)]);
    let record = load(&state, &caller, &id).await?;
    let (which, version) = match (query.version.as_deref(), &record.draft, &record.live) {
        (None | Some("draft"), Some(draft), _) => ("draft", draft),
        (None | Some("live"), None, Some(live)) | (Some("live"), _, Some(live)) => ("live", live),
        (Some(other @ ("draft" | "live")), _, _) => {
            return Err(Problem::not_found("version-not-found", format!("The campaign has no {other} version"))
                .campaign(record.id));
        }
        (Some(_), _, _) => return Err(bad_query("must be `draft` or `live`".into())),
        (None, None, None) => return Err(Problem::internal().detail("campaign without versions")),
    };
    let compiled =
        CompiledContent::compile(&version.definition.content).map_err(|errors| template_problem(errors, record.id))?;
    let rendered = compiled
        .render(Value::Object(request.profile), Value::Object(request.context))
        .map_err(|error| template_problem(vec![error], record.id))?;
    let mut output = Map::new();
    let mut data = Map::new();
    for (part, text) in rendered {
        match part.strip_prefix("data.") {
            Some(key) => {
                data.insert(key.to_string(), Value::String(text));
            }
            None => {
                output.insert(part, Value::String(text));
            }
        }
    }
    if !data.is_empty() {
        output.insert("data".into(), Value::Object(data));
    }
    Ok(Json(json!({ "campaignId": record.id, "version": which, "versionId": version.id, "rendered": output })))
}
