//! RFC 7807 problem details, in AJO's error shape: every error a client sees has a stable `type`
//! it can branch on, a readable `title`, the HTTP status, and the request id to quote in a
//! support ticket. Handlers return `Result<_, Problem>`; nothing else produces error bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::request_id;

/// The base of every problem `type`; the suffix is the stable part.
pub const TYPE_BASE: &str = "https://herald.dev/errors/";

/// A problem response; boxed so that `Result<T, Problem>` stays small on the happy path.
#[derive(Debug)]
pub struct Problem(Box<Details>);

#[derive(Debug)]
struct Details {
    status: StatusCode,
    /// The stable suffix of `type`, e.g. `validation`.
    kind: &'static str,
    title: String,
    detail: Option<String>,
    /// Extra members (field errors, review problems, the campaign status, ...).
    extensions: Map<String, Value>,
    /// Ids echoed in `report.additionalContext`, as AJO does.
    context: Map<String, Value>,
    retry_after_seconds: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, title: impl Into<String>) -> Self {
        Self(Box::new(Details {
            status,
            kind,
            title: title.into(),
            detail: None,
            extensions: Map::new(),
            context: Map::new(),
            retry_after_seconds: None,
        }))
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn campaign(mut self, campaign_id: impl ToString) -> Self {
        self.0.context.insert("campaignId".into(), Value::String(campaign_id.to_string()));
        self
    }

    /// Adds an id to `report.additionalContext`.
    pub fn context_value(mut self, key: &str, value: &str) -> Self {
        self.0.context.insert(key.to_string(), Value::String(value.to_string()));
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.0.retry_after_seconds = Some(seconds);
        self
    }

    /// 400 with one entry per offending field.
    pub fn validation(title: impl Into<String>, errors: Vec<Value>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation", title).with("errors", errors)
    }

    pub fn field_error(pointer: &str, detail: impl Into<String>) -> Value {
        json!({ "pointer": pointer, "detail": detail.into() })
    }

    pub fn not_found(kind: &'static str, title: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, title)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service temporarily unavailable")
            .detail(detail)
            .retry_after(1)
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let problem = *self.0;
        let request_id = request_id::current();
        let mut body = Map::new();
        body.insert("type".into(), Value::String(format!("{TYPE_BASE}{}", problem.kind)));
        body.insert("title".into(), Value::String(problem.title));
        body.insert("status".into(), Value::from(problem.status.as_u16()));
        if let Some(detail) = problem.detail {
            body.insert("detail".into(), Value::String(detail));
        }
        let mut context = problem.context;
        if let Some(id) = &request_id {
            context.entry("requestId").or_insert_with(|| Value::String(id.clone()));
            body.insert("requestId".into(), Value::String(id.clone()));
        }
        body.insert("report".into(), json!({ "additionalContext": context }));
        body.extend(problem.extensions);
        let mut response = (problem.status, axum::Json(Value::Object(body))).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(seconds) = problem.retry_after_seconds {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if problem.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<herald_store::StoreError> for Problem {
    fn from(error: herald_store::StoreError) -> Self {
        use herald_store::StoreError;
        match error {
            StoreError::Unavailable(reason) => {
                tracing::warn!(error = %reason, "database unavailable");
                Problem::unavailable("the database is unavailable; retry shortly")
            }
            StoreError::Conflict(constraint) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "The request conflicts with existing data")
                    .detail(constraint)
            }
            other => {
                tracing::error!(error = %other, "store error");
                Problem::internal()
            }
        }
    }
}
