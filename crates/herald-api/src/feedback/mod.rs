//! `POST /feedback/sns`: SES events pushed by an SNS HTTPS subscription. Unauthenticated, as SNS
//! cannot send a key: a message is taken only from a configured topic
//! (`HERALD_FEEDBACK_SNS_TOPIC_ARNS`; anyone can create a topic, and SNS signs theirs too) and only
//! when its SNS signature verifies ([`signature`]). A subscription confirmation is confirmed by
//! visiting its `SubscribeURL`, which must be an SNS URL as well (no request to anywhere else).

pub(crate) mod signature;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use herald_core::feedback::parse_ses_event;
use herald_core::feedback::sns::{self, SnsMessage};
use herald_store::FeedbackOutcome;
use serde_json::{Value, json};

use crate::AppState;
use crate::problem::Problem;

/// What `herald api` takes SNS pushes from.
#[derive(Debug, Clone)]
pub struct SnsPushSettings {
    /// Topic ARNs whose notifications are taken in; empty: the endpoint is off.
    pub topics: Vec<String>,
    /// Matches the `scheme://host[:port]` of certificate and subscribe URLs.
    pub origin: regex::Regex,
}

/// The endpoint's state: the settings and the certificate cache.
#[derive(Debug)]
pub(crate) struct SnsPush {
    topics: Vec<String>,
    verifier: signature::Verifier,
}

impl SnsPush {
    pub(crate) fn new(settings: &SnsPushSettings) -> Option<Self> {
        (!settings.topics.is_empty()).then(|| Self {
            topics: settings.topics.clone(),
            verifier: signature::Verifier::new(settings.origin.clone()),
        })
    }
}

const SOURCE: &str = "sns-push";
/// How old a pushed message may be: SNS's retries of an HTTP delivery end within an hour.
const MAX_AGE: chrono::Duration = chrono::Duration::hours(24);
/// How far ahead of this host's clock SNS's may be.
const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(15);

fn refused(state: &AppState, kind: &'static str, title: &str, detail: String) -> Problem {
    state.metrics.feedback(SOURCE, "unverified", "invalid");
    Problem::new(StatusCode::FORBIDDEN, kind, title.to_string()).detail(detail)
}

pub(crate) async fn sns(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, Problem> {
    let Some(push) = state.sns.as_deref() else {
        return Err(Problem::not_found("feedback-push-disabled", "SNS push feedback is not configured")
            .detail("set HERALD_FEEDBACK_SNS_TOPIC_ARNS to the topics whose notifications this API takes"));
    };
    // SNS posts JSON as text/plain: the body is read whatever its content type says.
    let message: SnsMessage = serde_json::from_slice(&body).map_err(|_| {
        Problem::new(StatusCode::BAD_REQUEST, "sns-message-invalid", "Not an SNS message").detail(
            "the body must be an SNS HTTP(S) message: Type, MessageId, TopicArn, Message, Timestamp, signature fields",
        )
    })?;
    if !push.topics.contains(&message.topic_arn) {
        tracing::warn!(topic = %message.topic_arn.chars().take(200).collect::<String>(), "an SNS message from a topic not in HERALD_FEEDBACK_SNS_TOPIC_ARNS; refused");
        return Err(refused(
            &state,
            "sns-topic-not-allowed",
            "Not a topic this API takes",
            "the topic is not configured".into(),
        ));
    }
    if let Err(why) = push.verifier.verify(&message).await {
        tracing::warn!(topic = %message.topic_arn, reason = %why, "an SNS message whose signature does not verify; refused, nothing recorded");
        return Err(refused(&state, "sns-signature-invalid", "The SNS signature does not verify", why.to_string()));
    }
    // A signed message stays valid for ever: one captured and replayed after its identity is
    // forgotten (HERALD_FEEDBACK_RETENTION_DAYS) would count again. SNS retries within an hour.
    let sent_at = chrono::DateTime::parse_from_rfc3339(&message.timestamp).map(|t| t.with_timezone(&chrono::Utc));
    let age = sent_at.map(|at| state.clock.now() - at);
    if !age.is_ok_and(|age| age <= MAX_AGE && age >= -MAX_SKEW) {
        tracing::warn!(topic = %message.topic_arn, "a signed SNS message older than a day (or from the future); refused as a replay");
        return Err(refused(
            &state,
            "sns-message-stale",
            "The SNS message is too old",
            "its Timestamp is more than 24 hours old, or in the future".into(),
        ));
    }
    match message.kind.as_str() {
        sns::SUBSCRIPTION_CONFIRMATION => confirm(&state, push, &message).await,
        sns::NOTIFICATION => notification(&state, &message).await,
        kind => {
            tracing::info!(topic = %message.topic_arn, kind = %kind.chars().take(40).collect::<String>(), "an SNS message that is not a notification; acknowledged");
            Ok(Json(json!({ "taken": false })))
        }
    }
}

/// Visits the `SubscribeURL` of a verified confirmation: SNS then starts sending notifications.
async fn confirm(state: &AppState, push: &SnsPush, message: &SnsMessage) -> Result<Json<Value>, Problem> {
    let url = message.subscribe_url.as_deref().and_then(|url| push.verifier.allowed(url));
    let Some(url) = url else {
        return Err(refused(
            state,
            "sns-signature-invalid",
            "The subscribe URL is not an SNS one",
            "not confirmed".into(),
        ));
    };
    match push.verifier.http().get(url).send().await {
        Ok(answer) if answer.status().is_success() => {
            tracing::info!(topic = %message.topic_arn, "SNS subscription confirmed");
            Ok(Json(json!({ "confirmed": true })))
        }
        Ok(answer) => {
            tracing::warn!(topic = %message.topic_arn, status = %answer.status(), "SNS refused the subscription confirmation");
            Err(Problem::unavailable(format!(
                "SNS answered {} to the confirmation; it will send it again",
                answer.status()
            )))
        }
        Err(error) => {
            tracing::warn!(topic = %message.topic_arn, error = %error.without_url(), "could not confirm an SNS subscription");
            Err(Problem::unavailable("SNS could not be reached to confirm the subscription; it will send it again"))
        }
    }
}

/// Records the SES event a verified notification carries. What cannot be read is acknowledged
/// (200): SNS would only send it again. A database outage is a 503, so SNS retries.
async fn notification(state: &AppState, message: &SnsMessage) -> Result<Json<Value>, Problem> {
    let event = match parse_ses_event(&message.message) {
        Ok(Some(event)) => event,
        Ok(None) => {
            state.metrics.feedback(SOURCE, "other", "ignored");
            return Ok(Json(json!({ "taken": false })));
        }
        Err(why) => {
            state.metrics.feedback(SOURCE, "unreadable", "invalid");
            tracing::warn!(topic = %message.topic_arn, sns_message_id = %message.message_id, error = why.kind(),
                "a signed SNS notification that is not an SES event; acknowledged, nothing recorded");
            return Ok(Json(json!({ "taken": false })));
        }
    };
    let outcome = state.store.record_feedback(std::slice::from_ref(&event), state.clock.now()).await?;
    let outcome = outcome.first().copied().unwrap_or(FeedbackOutcome::Unmatched);
    if outcome == FeedbackOutcome::Unmatched {
        tracing::info!(event = event.event_type, ses_message_id = %event.message_id,
            "an SES event about a message Herald has no delivery for; counted, nothing else");
    }
    state.metrics.feedback(SOURCE, event.event_type, outcome.as_str());
    Ok(Json(json!({ "taken": true, "outcome": outcome.as_str() })))
}
