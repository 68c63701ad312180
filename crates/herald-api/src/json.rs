//! The JSON body extractor: malformed JSON, unknown fields and wrong types become 400 problems
//! naming the field; an oversize body becomes 413; a wrong content type 415. axum's own
//! rejections are plain text, which clients of a problem+json API cannot parse.
//!
//! Every body goes through [`parse`], which also refuses NUL characters anywhere in the document
//! (strings and object keys, at any depth): PostgreSQL can store a NUL neither in `text` nor in
//! `jsonb`, so one would otherwise fail a statement deep in the store and answer 500.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::problem::Problem;

#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// The query-string extractor: a bad query string is a 400 problem, like a bad body.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|query| ApiQuery(query.0)).map_err(
            |rejection| {
                Problem::validation("Invalid query string", vec![Problem::field_error("/query", rejection.body_text())])
            },
        )
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Expected a JSON body",
            )
            .detail("send the body with `Content-Type: application/json`"));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(body_problem)?;
        parse(&bytes).map(ApiJson)
    }
}

/// A body read whole, for handlers that take an optional body of any type (e.g. duplicate); an
/// unreadable or oversize body is a problem, as with [`ApiJson`].
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state).await.map(RawBody).map_err(body_problem)
    }
}

/// Parses `bytes` as `T`, turning serde's error into a problem that points at the field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    refuse_nul(bytes)?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let pointer = pointer_of(error.path());
        (pointer, error.into_inner())
    });
    // Trailing garbage after the document is malformed JSON too.
    let parsed = parsed.and_then(|value| deserializer.end().map(|()| value).map_err(|error| (String::new(), error)));
    parsed.map_err(|(pointer, inner)| {
        let title = if inner.is_syntax() || inner.is_eof() { "Malformed JSON" } else { "Invalid request body" };
        Problem::validation(title, vec![Problem::field_error(&pointer, inner.to_string())])
    })
}

/// At most this many NUL findings are listed in one problem.
const MAX_NUL_ERRORS: usize = 20;

/// Refuses a document holding a NUL character, with one error per place.
fn refuse_nul(bytes: &[u8]) -> Result<(), Problem> {
    // Inside JSON a NUL can only be written as the escape `\u0000` (a raw control character is
    // malformed), so a body without that text, nearly every body, is not walked at all.
    if !bytes.windows(6).any(|window| window == br"\u0000") {
        return Ok(());
    }
    // Malformed JSON is left to the typed parse, which says where it breaks.
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    find_nul(&value, &mut String::new(), &mut errors);
    if errors.is_empty() { Ok(()) } else { Err(Problem::validation("Invalid request body", errors)) }
}

fn find_nul(value: &Value, pointer: &mut String, errors: &mut Vec<Value>) {
    const DETAIL: &str = "contains a NUL character (\\u0000), which cannot be stored";
    match value {
        Value::String(text) if text.contains('\0') && errors.len() < MAX_NUL_ERRORS => {
            errors.push(Problem::field_error(pointer, DETAIL));
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let length = pointer.len();
                pointer.push_str(&format!("/{index}"));
                find_nul(item, pointer, errors);
                pointer.truncate(length);
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                let length = pointer.len();
                pointer.push('/');
                pointer.push_str(&escape_token(key));
                if key.contains('\0') && errors.len() < MAX_NUL_ERRORS {
                    errors.push(Problem::field_error(pointer, format!("the member name {DETAIL}")));
                }
                find_nul(member, pointer, errors);
                pointer.truncate(length);
            }
        }
        _ => {}
    }
}

/// A key as a JSON pointer token (RFC 6901: `~` is `~0`, `/` is `~1`).
pub(crate) fn escape_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// serde_path_to_error's `a.b[0].c` as a JSON pointer `/a/b/0/c`.
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => pointer.push_str(&format!("/{}", escape_token(key))),
            Segment::Enum { variant } => pointer.push_str(&format!("/{variant}")),
            Segment::Unknown => pointer.push_str("/?"),
        }
    }
    pointer
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large")
            .detail(rejection.body_text())
    } else {
        Problem::new(StatusCode::BAD_REQUEST, "validation", "Unreadable request body").detail(rejection.body_text())
    }
}

/// Deserializes an already parsed JSON value as `T`, with the same field-pointing errors.
pub fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let pointer = pointer_of(error.path());
        Problem::validation(
            "Invalid request body",
            vec![Problem::field_error(&pointer, error.into_inner().to_string())],
        )
    })
}
