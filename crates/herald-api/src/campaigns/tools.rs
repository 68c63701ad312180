//! Helpers for campaign owners: the ready cURL sample of the execution API and the preview.
//!
//! A preview renders content that may never have been reviewed (a draft), with a sample the
//! caller chooses. So it first runs the review's template checks and refuses (422) what the
//! review would refuse, and it renders as the worker does: on the blocking pool, a few renders at
//! a time, within the render budgets (see `herald_core::template`). A slow template cannot
//! stall the API's runtime, nor its health checks.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use herald_core::review::{ReviewProblem, review_content};
use herald_core::template::{CompiledContent, RENDER_TIME_BUDGET, Rendered, TemplateError};
use herald_core::{Channel, Content, Scope};
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

/// How long a preview waits for a turn to compile and render before answering 503.
const TURN_WAIT: Duration = Duration::from_secs(5);
/// How long a preview waits for its compile and render: their own bounds (the parser's work cap,
/// the render's deadline) end them well before; this only keeps a request from hanging.
const WORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `work` for `sandbox` on the blocking pool, in turn with the other previews.
async fn sandboxed<T: Send + 'static>(
    state: &AppState,
    sandbox: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Problem> {
    let turns = state
        .render_turns
        .acquire_until(sandbox, tokio::time::Instant::now() + TURN_WAIT)
        .await
        .ok_or_else(|| Problem::unavailable("every template renderer of this sandbox is busy; try again"))?;
    let task = tokio::task::spawn_blocking(move || {
        let _turns = turns;
        work()
    });
    match tokio::time::timeout(WORK_TIMEOUT.max(RENDER_TIME_BUDGET), task).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(_)) => Err(Problem::internal().detail("the template worker stopped")),
        Err(_) => Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "template-error", "The content does not render")
            .detail("compiling and rendering took too long")),
    }
}

/// What a preview found.
enum Preview {
    /// What the review refuses in the content; nothing was rendered.
    Refused(Vec<ReviewProblem>),
    Failed(TemplateError),
    Rendered(Rendered),
}

fn preview_content(content: &Content, profile: Value, context: Value) -> Preview {
    match review_content(content) {
        (Some(compiled), problems) if problems.is_empty() => match compiled.render(profile, context) {
            Ok(rendered) => Preview::Rendered(rendered),
            Err(error) => Preview::Failed(error),
        },
        (_, problems) => Preview::Refused(problems),
    }
}

/// The review's problems as a preview reports them: like render errors, with the part.
fn refused_problem(problems: Vec<ReviewProblem>, id: uuid::Uuid) -> Problem {
    let errors: Vec<Value> = problems
        .into_iter()
        .map(|problem| {
            let part = problem.pointer.trim_start_matches("/content/").replacen('/', ".", 1);
            let mut error =
                json!({ "part": part, "pointer": problem.pointer, "message": problem.detail, "code": problem.code });
            if let Some(line) = problem.line {
                error["line"] = json!(line);
            }
            error
        })
        .collect();
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "template-error", "The content does not render")
        .detail("the review would refuse this content, so it is not rendered")
        .with("errors", Value::Array(errors))
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

/// A recipient that is sent to as shown, once its placeholders are filled in: an identity in the
/// channel's own address namespace (`email`, `phone`) is its address; any other namespace needs a
/// stored profile, so the sample sends to an address (`external`) instead, as it always does for
/// a high-throughput campaign (whose endpoint takes external recipients only).
fn sample_recipient(channel: Channel, definition: &herald_core::CampaignDefinition) -> Value {
    let namespace = definition.identity_namespace.as_deref().filter(|_| !definition.high_throughput);
    let address = match channel {
        Channel::Email => "<email address>",
        Channel::Sms => "<phone number, E.164: +33612345678>",
        Channel::Push => "<device token>",
    };
    if let Some(namespace) = namespace.filter(|n| channel.address_namespace() == Some(*n)) {
        return json!({ "type": "aep", "namespace": namespace, "userId": address });
    }
    let mut recipient = json!({ "type": "external", "userId": address });
    if channel == Channel::Push {
        // The token's platform picks the SNS platform application.
        let platform = definition
            .surface
            .platform_application_arn
            .as_ref()
            .and_then(|arns| arns.keys().next().cloned())
            .unwrap_or_else(|| "<platform>".into());
        recipient["channelData"] = json!({ "pushPlatform": platform });
    }
    recipient
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
    let content = live.definition.content.clone();
    let compiled = sandboxed(&state, &caller.sandbox, move || CompiledContent::compile(&content))
        .await?
        .map_err(|errors| template_problem(errors, record.id))?;
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
    let mut recipient = sample_recipient(record.channel, &live.definition);
    // A high-throughput campaign has no profiles (its review refuses `profile.*`).
    if !profile.is_empty() && !live.definition.high_throughput {
        recipient["profile"] = Value::Object(profile);
    }
    if !context.is_empty() {
        recipient["context"] = Value::Object(context);
    }
    let body = json!({ "requestId": "<unique request id>", "campaignId": record.id, "recipients": [recipient] });
    let pretty = serde_json::to_string_pretty(&body).unwrap_or_default();
    let endpoint = if live.definition.high_throughput { "highthroughput" } else { "unitary" };
    let url = format!("{}/im/executions/{endpoint}", state.config.public_url.trim_end_matches('/'));
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
    let content = version.definition.content.clone();
    let (profile, context) = (Value::Object(request.profile), Value::Object(request.context));
    let rendered = match sandboxed(&state, &caller.sandbox, move || preview_content(&content, profile, context)).await?
    {
        Preview::Rendered(rendered) => rendered,
        Preview::Failed(error) => return Err(template_problem(vec![error], record.id)),
        Preview::Refused(problems) => return Err(refused_problem(problems, record.id)),
    };
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
