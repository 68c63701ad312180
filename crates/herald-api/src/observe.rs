//! Per-request telemetry: a server span named after the route (joined to the caller's trace when
//! it sends a `traceparent`), and the request counter and latency histogram. `/metrics` serves
//! the process's registry.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_telemetry::metrics::{HttpLabels, RouteLabels};
use tracing::Instrument;

use crate::AppState;

pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let method = method_label(request.method());
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        herald.request_id = crate::request_id::current().unwrap_or_default(),
    );
    if let Some(traceparent) = request.headers().get("traceparent").and_then(|value| value.to_str().ok()) {
        herald_telemetry::trace::set_remote_parent(&span, traceparent);
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    // OpenTelemetry's HTTP server convention: only 5xx marks the span as an error.
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let metrics = &state.metrics;
    let labels = RouteLabels { route, method };
    metrics.http_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    metrics.http_requests.get_or_create(&HttpLabels { route: labels.route, method, status }).inc();
    response
}

/// The method as a label: the standard ones by name, anything else as `other` (a fixed set).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: the Prometheus text format, without authentication (scrapers do not carry
/// API keys; expose the port only to the monitoring network).
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, herald_telemetry::metrics::CONTENT_TYPE)], state.metrics.encode()).into_response()
}
