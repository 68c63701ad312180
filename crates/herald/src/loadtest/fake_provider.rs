//! `herald fake-provider`: a fast stand-in for SES v2 `SendEmail` and SNS `Publish` that workers
//! reach through `AWS_ENDPOINT_URL` with the real aws-sdk clients, for sizing a deployment
//! without sending anything (and for the end-to-end benchmark).
//!
//! It answers every call at once with a static success and records the load-test marker each
//! message carries (`hlm.<run>.<seq>.<intended µs>`, see `loadtest`): how many calls carried it
//! and when the first arrived. `herald loadtest --provider URL` reads that back to count what
//! was sent, lost and duplicated. The marker is found by scanning the raw request for `hlm.`;
//! it uses only characters that neither JSON nor form encoding escape, so one scan serves both
//! the SES JSON body and the SNS form body without parsing either.
//!
//! `--drop-every N` and `--repeat-every N` make it lie on purpose (answer success but record
//! nothing, or record a call twice), so a test can prove the load test's loss and duplicate
//! counters are able to fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::args::FakeProviderArgs;

/// The prefix of every load-test marker.
pub(crate) const MARKER_PREFIX: &str = "hlm.";

/// What one marker went through.
#[derive(Debug, Clone, Copy)]
struct Seen {
    calls: u32,
    first_arrival_us: i64,
}

#[derive(Debug, Default)]
struct Shared {
    markers: Mutex<HashMap<String, Seen>>,
    calls: AtomicU64,
    /// Calls whose body held no marker (another client of the same fake, a template without
    /// `context.marker`): answered, counted, not recorded.
    unmarked: AtomicU64,
    drop_every: AtomicU64,
    repeat_every: AtomicU64,
    /// Changes when the fake starts or is reset: a load test that sees it change knows the
    /// markers it is waiting for were forgotten, not lost.
    instance: Mutex<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lies {
    #[serde(default)]
    drop_every: u64,
    #[serde(default)]
    repeat_every: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarkerQuery {
    /// Only markers starting with this (one load-test run's).
    #[serde(default)]
    prefix: String,
    /// Only how many there are, not the list (what a load test polls while it waits).
    #[serde(default)]
    count_only: bool,
}

/// Serves until `stop` completes (SIGTERM or Ctrl-C for the command).
pub(crate) async fn serve(
    args: FakeProviderArgs,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    let shared = Arc::new(Shared::default());
    shared.drop_every.store(args.drop_every, Ordering::Relaxed);
    shared.repeat_every.store(args.repeat_every, Ordering::Relaxed);
    *shared.instance.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = uuid::Uuid::new_v4().to_string();
    let router = Router::new()
        .route("/v2/email/outbound-emails", post(send_email))
        .route("/", post(publish))
        .route("/_fake/markers", get(markers).delete(forget))
        .route("/_fake/reset", post(reset))
        .with_state(shared);
    // The bound address on stdout, so a caller that asked for port 0 learns the port.
    println!("fake provider listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).with_graceful_shutdown(stop).await?;
    Ok(())
}

/// The longest marker recorded: `hlm.` + run + `.` + seq + `.` + due time is far shorter, and a
/// body full of marker-like text must not grow the fake's memory by megabytes.
const MAX_MARKER: usize = 64;

/// The first load-test marker in `body`: `hlm.`, a run of 8 lowercase hex digits, then `.` and
/// the rest, or `check` (the load test's first call). Other text starting with `hlm.` (a context
/// value, say) is not a marker.
fn marker(body: &[u8]) -> Option<&str> {
    let prefix = MARKER_PREFIX.as_bytes();
    let mut from = 0;
    while let Some(at) = body[from..].windows(prefix.len()).position(|window| window == prefix) {
        let rest = &body[from + at..];
        let end = rest.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'.')).unwrap_or(rest.len());
        let candidate = &rest[..end.min(MAX_MARKER)];
        let run = candidate.get(prefix.len()..prefix.len() + 8);
        let after = candidate.get(prefix.len() + 8..).unwrap_or_default();
        let is_run = run.is_some_and(|run| run.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
        if is_run && (after.starts_with(b".") || after == b"check") {
            return std::str::from_utf8(candidate).ok();
        }
        from += at + prefix.len();
    }
    None
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Records the call's marker (or lies about it); returns the call's number.
fn record(shared: &Shared, body: &[u8]) -> u64 {
    let number = shared.calls.fetch_add(1, Ordering::Relaxed) + 1;
    let Some(marker) = marker(body) else {
        shared.unmarked.fetch_add(1, Ordering::Relaxed);
        return number;
    };
    let every = |setting: &AtomicU64| {
        let n = setting.load(Ordering::Relaxed);
        n > 0 && number.is_multiple_of(n)
    };
    if every(&shared.drop_every) {
        return number;
    }
    let calls = if every(&shared.repeat_every) { 2 } else { 1 };
    let mut markers = shared.markers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    markers
        .entry(marker.to_string())
        .and_modify(|seen| seen.calls += calls)
        .or_insert(Seen { calls, first_arrival_us: now_us() });
    number
}

async fn send_email(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let number = record(&shared, &body);
    let body = format!(r#"{{"MessageId":"fake-{number:012}"}}"#);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// SNS's query protocol: every call is a form POST to `/`; workers send `Publish`, and
/// `CreatePlatformEndpoint` for push.
async fn publish(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    if body.windows(30).any(|window| window == b"Action=CreatePlatformEndpoint") {
        // Push: the worker registers the device token, then publishes to the endpoint.
        let number = shared.calls.load(Ordering::Relaxed);
        let body = format!(
            "<CreatePlatformEndpointResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\">\
             <CreatePlatformEndpointResult><EndpointArn>arn:aws:sns:us-east-1:000000000000:endpoint/fake/{number}\
             </EndpointArn></CreatePlatformEndpointResult><ResponseMetadata><RequestId>fake</RequestId>\
             </ResponseMetadata></CreatePlatformEndpointResponse>"
        );
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response();
    }
    if !body.windows(14).any(|window| window == b"Action=Publish") {
        let error = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code>\
                     <Message>the fake provider only publishes</Message></Error></ErrorResponse>";
        return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/xml")], error).into_response();
    }
    let number = record(&shared, &body);
    let body = format!(
        "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
         <MessageId>fake-{number:012}</MessageId></PublishResult><ResponseMetadata>\
         <RequestId>fake-{number:012}</RequestId></ResponseMetadata></PublishResponse>"
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

/// `{"calls", "unmarked", "count", "markers": [[marker, calls, firstArrivalMicros], …]}`
/// (`markers` omitted with `countOnly=true`).
async fn markers(State(shared): State<Arc<Shared>>, Query(query): Query<MarkerQuery>) -> Response {
    let (count, markers) = {
        let markers = shared.markers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let matching = markers.iter().filter(|(marker, _)| marker.starts_with(&query.prefix));
        if query.count_only {
            (matching.count(), None)
        } else {
            let list: Vec<_> =
                matching.map(|(marker, seen)| json!([marker, seen.calls, seen.first_arrival_us])).collect();
            (list.len(), Some(list))
        }
    };
    let instance = shared.instance.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    let mut body = json!({
        "instance": instance,
        "calls": shared.calls.load(Ordering::Relaxed),
        "unmarked": shared.unmarked.load(Ordering::Relaxed),
        "count": count,
    });
    if let Some(markers) = markers {
        body["markers"] = json!(markers);
    }
    axum::Json(body).into_response()
}

/// Forgets the markers starting with `prefix` (a finished run's), so that a fake serving many
/// runs does not grow without bound; `prefix` must be one run's (`hlm.` and its 8 hex digits).
async fn forget(State(shared): State<Arc<Shared>>, Query(query): Query<MarkerQuery>) -> StatusCode {
    let run = query.prefix.strip_prefix(MARKER_PREFIX).unwrap_or_default();
    if run.len() != 8 || !run.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return StatusCode::BAD_REQUEST;
    }
    let mut markers = shared.markers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    markers.retain(|marker, _| !marker.starts_with(&query.prefix));
    StatusCode::NO_CONTENT
}

/// Forgets everything recorded and sets how the fake lies from now on.
async fn reset(State(shared): State<Arc<Shared>>, Query(lies): Query<Lies>) -> StatusCode {
    shared.markers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    shared.calls.store(0, Ordering::Relaxed);
    shared.unmarked.store(0, Ordering::Relaxed);
    shared.drop_every.store(lies.drop_every, Ordering::Relaxed);
    shared.repeat_every.store(lies.repeat_every, Ordering::Relaxed);
    *shared.instance.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = uuid::Uuid::new_v4().to_string();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_in_a_json_body_and_in_a_form_body() {
        let ses = br#"{"Content":{"Simple":{"Body":{"Text":{"Data":"code hlm.ab12cd34.7.1700000000000000"}}}}}"#;
        assert_eq!(marker(ses), Some("hlm.ab12cd34.7.1700000000000000"));
        let sns = b"Action=Publish&Message=hlm.ab12cd34.8.1700000000000001%20is%20your%20code&Version=2010-03-31";
        assert_eq!(marker(sns), Some("hlm.ab12cd34.8.1700000000000001"));
        assert_eq!(marker(b"first call hlm.ab12cd34check"), Some("hlm.ab12cd34check"));
        assert_eq!(marker(b"no marker here"), None);
        // Text of the tenant's that starts like a marker does not hide the real one.
        assert_eq!(marker(b"hlm.zz then hlm.x then hlm.ab12cd34.9.1"), Some("hlm.ab12cd34.9.1"));
        assert_eq!(marker(b"hlm.AB12CD34.1.1 hlm.ab12cd3"), None);
        let long = format!("hlm.ab12cd34.{}", "1".repeat(10_000));
        assert_eq!(marker(long.as_bytes()).map(str::len), Some(MAX_MARKER));
    }

    #[test]
    fn dropping_and_repeating_change_what_is_recorded_not_what_is_answered() {
        let shared = Shared::default();
        shared.drop_every.store(2, Ordering::Relaxed);
        shared.repeat_every.store(3, Ordering::Relaxed);
        for seq in 1..=6 {
            record(&shared, format!("hlm.0000000a.{seq}.0").as_bytes());
        }
        let markers = shared.markers.lock().unwrap();
        let calls = |seq: u32| markers.get(&format!("hlm.0000000a.{seq}.0")).map(|seen| seen.calls);
        // Call 2, 4 and 6 are dropped (6 is also a repeat: dropping wins); call 3 is recorded twice.
        assert_eq!(
            [calls(1), calls(2), calls(3), calls(4), calls(5), calls(6)],
            [Some(1), None, Some(2), None, Some(1), None]
        );
        assert_eq!(shared.calls.load(Ordering::Relaxed), 6);
    }
}
