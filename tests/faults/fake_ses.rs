//! A scriptable stand-in for SES v2 `SendEmail`, served in the test process, that the real
//! `herald worker` (with the real aws-sdk-sesv2 client) is pointed at with `AWS_ENDPOINT_URL`.
//!
//! Every email the suite sends has a text body that is exactly its unique marker, so the fake
//! counts calls per marker. What it answers is set at runtime: success, a share of transient
//! errors, permanent rejections, hanging calls, a fixed latency.
//!
//! A call the fake *accepts* is counted as "ok" the moment it decides to accept it, before any
//! latency or hang: a real provider has sent the email by then, whether or not the worker is still
//! there to read the answer. So `ok > 1` for a marker is a duplicate delivery to the recipient.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// What one marker went through at the fake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MarkerCalls {
    /// Requests received.
    pub(crate) calls: u32,
    /// Requests accepted (sent to the recipient): answered 200 or about to be.
    pub(crate) ok: u32,
    /// Requests held past the worker's timeout (see [`Behaviour::hang_first`]).
    pub(crate) hung: u32,
    /// Requests answered 400 MessageRejected.
    pub(crate) rejected: u32,
    /// Requests answered 500 InternalFailure or 429 TooManyRequestsException.
    pub(crate) transient: u32,
}

/// What the fake answers. Set with [`FakeSes::set`]; takes effect for the next call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Behaviour {
    /// Share of calls (0 to 1) answered with a transient error, alternating 500 and 429.
    pub(crate) transient_ratio: f64,
    /// Calls whose marker starts with this are rejected for good (400 MessageRejected);
    /// `Some("")` rejects every call.
    pub(crate) reject_prefix: Option<String>,
    /// The next this-many calls are held for `hang_for` without an answer, then accepted (200)
    /// when `hang_then_ok`, else refused (503): a provider that took the message and answered
    /// too late, or one that never took it.
    pub(crate) hang_first: u64,
    pub(crate) hang_for: Duration,
    pub(crate) hang_then_ok: bool,
    /// Every accepted call takes this long to answer.
    pub(crate) latency: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    /// Calls left to hang (counted down across all markers).
    hangs_left: AtomicU64,
    markers: Mutex<HashMap<String, MarkerCalls>>,
    /// Numbers every call, for the deterministic transient-error draw.
    call_number: AtomicU64,
    /// Numbers every accepted call, for unique message ids.
    message_number: AtomicU64,
}

#[derive(Debug, Clone)]
pub(crate) struct FakeSes {
    pub(crate) url: String,
    shared: Arc<Shared>,
}

impl FakeSes {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake SES port");
        let url = format!("http://{}", listener.local_addr().expect("a local address"));
        let shared = Arc::new(Shared::default());
        let router = Router::new()
            .route("/v2/email/outbound-emails", post(send_email))
            .fallback(unsupported)
            .with_state(Arc::clone(&shared));
        tokio::spawn(serve(listener, router));
        Self { url, shared }
    }

    /// Replaces the behaviour; also (re)arms `hang_first` hanging calls.
    pub(crate) fn set(&self, behaviour: Behaviour) {
        self.shared.hangs_left.store(behaviour.hang_first, Ordering::SeqCst);
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Forgets every count (a new scenario).
    pub(crate) fn reset(&self) {
        self.set(Behaviour::default());
        self.shared.markers.lock().unwrap().clear();
    }

    /// Counts per marker so far.
    pub(crate) fn snapshot(&self) -> HashMap<String, MarkerCalls> {
        self.shared.markers.lock().unwrap().clone()
    }

    /// Requests received so far, all markers together.
    pub(crate) fn total_calls(&self) -> u64 {
        self.shared.markers.lock().unwrap().values().map(|m| u64::from(m.calls)).sum()
    }
}

/// Serves `router`, handling a request to the end even when its client hangs up first.
///
/// A real provider that has read a whole request sends the email whether or not the caller is
/// still connected. hyper's default is the opposite: an HTTP/1 connection whose read side ends
/// while a request is in flight is closed and the handler dropped. A worker killed just after
/// writing its request would then go uncounted here, and the suite would take a sent email for
/// one that never left. With half-close allowed, the handler runs (and counts) regardless.
async fn serve(listener: tokio::net::TcpListener, router: Router) {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// splitmix64: a well-spread, reproducible draw per call number.
fn draw(n: u64) -> f64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % 1_000_000) as f64 / 1_000_000.0
}

/// An AWS restJson error as SES v2 sends it: the code in `x-amzn-ErrorType` and in `__type`.
fn aws_error(status: StatusCode, code: &str) -> Response {
    let body = serde_json::json!({ "__type": code, "message": format!("fake ses: {code}") }).to_string();
    (status, [("x-amzn-ErrorType", code), ("content-type", "application/json")], body).into_response()
}

fn accepted(shared: &Shared) -> Response {
    let n = shared.message_number.fetch_add(1, Ordering::SeqCst);
    let body = serde_json::json!({ "MessageId": format!("fake-{n:010}") }).to_string();
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// What the fake does with one call, decided (and counted) before any waiting.
enum Verdict {
    Hang { then_ok: bool, wait: Duration },
    Reject,
    Transient { throttle: bool },
    Accept { latency: Duration },
}

async fn send_email(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    // The campaign's text body is exactly `{{ context.marker }}`.
    let Some(marker) = request.pointer("/Content/Simple/Body/Text/Data").and_then(|v| v.as_str()).map(str::to_string)
    else {
        return aws_error(StatusCode::BAD_REQUEST, "BadRequestException");
    };
    let behaviour = shared.behaviour.lock().unwrap().clone();
    let number = shared.call_number.fetch_add(1, Ordering::SeqCst);
    let hang = shared.hangs_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1)).is_ok();
    let verdict = if hang {
        Verdict::Hang { then_ok: behaviour.hang_then_ok, wait: behaviour.hang_for }
    } else if behaviour.reject_prefix.as_deref().is_some_and(|prefix| marker.starts_with(prefix)) {
        Verdict::Reject
    } else if draw(number) < behaviour.transient_ratio {
        Verdict::Transient { throttle: number % 2 == 0 }
    } else {
        Verdict::Accept { latency: behaviour.latency }
    };
    {
        let mut markers = shared.markers.lock().unwrap();
        let counts = markers.entry(marker).or_default();
        counts.calls += 1;
        match &verdict {
            Verdict::Hang { then_ok, .. } => {
                counts.hung += 1;
                counts.ok += u32::from(*then_ok);
            }
            Verdict::Reject => counts.rejected += 1,
            Verdict::Transient { .. } => counts.transient += 1,
            Verdict::Accept { .. } => counts.ok += 1,
        }
    }
    match verdict {
        Verdict::Hang { then_ok, wait } => {
            tokio::time::sleep(wait).await;
            if then_ok { accepted(&shared) } else { aws_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable") }
        }
        Verdict::Reject => aws_error(StatusCode::BAD_REQUEST, "MessageRejected"),
        Verdict::Transient { throttle: true } => aws_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException"),
        Verdict::Transient { throttle: false } => aws_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"),
        Verdict::Accept { latency } => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            accepted(&shared)
        }
    }
}

/// SNS and every other operation: the suite only sends email.
async fn unsupported() -> Response {
    aws_error(StatusCode::BAD_REQUEST, "UnsupportedOperation")
}
