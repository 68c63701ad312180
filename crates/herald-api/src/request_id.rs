//! Every request gets an id (the caller's `X-Request-Id` when it sends a sane one), echoed in the
//! response header and in every problem body, and carried in a task-local so error responses
//! built anywhere below can include it. This layer also turns a panic into a problem response.

use std::panic::AssertUnwindSafe;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use crate::problem::Problem;

pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled, when called inside one.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub async fn layer(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| acceptable(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_string);
    let header = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    let handled = REQUEST_ID.scope(id, AssertUnwindSafe(next.run(request)).catch_unwind());
    let mut response = match handled.await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("request handler panicked");
            // The panic left the task-local scope; rebuild the problem with the id by hand.
            let mut response = Problem::internal().into_response();
            response.headers_mut().insert(HEADER, header.clone());
            response
        }
    };
    response.headers_mut().insert(HEADER, header);
    response
}
