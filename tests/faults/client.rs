//! The client side: an email campaign whose text body is the marker, and concurrent senders
//! that behave like a careful client system — on a connection error, 5xx, 409 or 429 they retry
//! the same `requestId` (after `Retry-After`, else 100 ms) until a 202 or a deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// The HTTP API of one scenario, with the bootstrap key.
#[derive(Debug, Clone)]
pub(crate) struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub(crate) fn new(base: &str) -> Self {
        // A request the API never answers (it was killed mid-request) must not hold a sender forever.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("an http client");
        Self { base: base.to_string(), http }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(StatusCode, Value), String> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(crate::herald::API_KEY)
            .json(body)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|error| error.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Creates and activates the suite's email campaign; returns its id. The text body is
    /// exactly the marker, which is how the fake provider tells messages apart.
    pub(crate) async fn create_campaign(&self, name: &str) -> String {
        let document = json!({
            "name": name,
            "channel": "email",
            "identityNamespace": "email",
            "surface": { "fromAddress": "no-reply@example.com", "fromName": "Fault suite" },
            "content": { "subject": "fault {{ context.marker }}", "text": "{{ context.marker }}" },
            "messageTtlSeconds": 3600
        });
        let (status, body) = self.post("/campaigns", &document).await.expect("the API answers");
        assert_eq!(status, StatusCode::CREATED, "create the campaign: {body}");
        let id = body["id"].as_str().expect("a campaign id").to_string();
        let (status, body) =
            self.post(&format!("/campaigns/{id}/activate"), &Value::Null).await.expect("the API answers");
        assert_eq!(status, StatusCode::OK, "activate the campaign: {body}");
        id
    }

    /// `POST path` with the bootstrap key; `None` if the API did not answer.
    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> Option<(StatusCode, Value)> {
        self.post(path, body).await.ok()
    }

    /// One execution of `campaign` for `marker`, retried on 5xx and 429; its execution id.
    pub(crate) async fn execute_once(&self, campaign: &str, request_id: &str, marker: &str) -> String {
        let started = Instant::now();
        loop {
            match self.execute(campaign, request_id, &format!("{marker}@example.com"), marker).await {
                Ok(reply) if reply.status == StatusCode::ACCEPTED => {
                    return reply.body["executionId"].as_str().expect("an execution id").to_string();
                }
                Ok(reply) if !reply.status.is_server_error() && reply.status != StatusCode::TOO_MANY_REQUESTS => {
                    panic!("{request_id}: {} {}", reply.status, reply.body)
                }
                other => {
                    assert!(started.elapsed() < Duration::from_secs(30), "{request_id}: {:?}", other.err());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// `POST /dead-letters/{id}/replay`, retried while the API answers 5xx.
    pub(crate) async fn replay_dead_letter(&self, id: &str) -> (StatusCode, Value) {
        let started = Instant::now();
        loop {
            match self.post(&format!("/dead-letters/{id}/replay"), &Value::Null).await {
                Ok((status, body)) if !status.is_server_error() => return (status, body),
                other => {
                    assert!(started.elapsed() < Duration::from_secs(30), "replaying {id}: {other:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One execution request for `marker`.
    async fn execute(&self, campaign: &str, request_id: &str, recipient: &str, marker: &str) -> Result<Reply, String> {
        let body = json!({
            "requestId": request_id,
            "campaignId": campaign,
            "recipients": [{ "type": "external", "userId": recipient, "context": { "marker": marker } }]
        });
        let response = self
            .http
            .post(format!("{}/im/executions/unitary", self.base))
            .bearer_auth(crate::herald::API_KEY)
            .json(&body)
            .send()
            .await
            .map_err(|error| format!("connection: {error}"))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|error| format!("reading the answer: {error}"))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, retry_after, body })
    }
}

struct Reply {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Value,
}

/// What happened to one request id.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestRecord {
    pub(crate) marker: String,
    pub(crate) request_id: String,
    pub(crate) recipient: String,
    /// Every execution id any answer carried (all must be equal).
    pub(crate) execution_ids: Vec<String>,
    pub(crate) tries: u32,
    pub(crate) accepted: bool,
    /// From the first try to the 202 (or to giving up).
    pub(crate) waited: Duration,
    /// The last non-202 outcome, for diagnostics.
    pub(crate) last_error: Option<String>,
    /// A 4xx other than 409/429: the request was refused for good (a bug in the suite or Herald).
    pub(crate) refused: Option<String>,
}

impl RequestRecord {
    pub(crate) fn execution_id(&self) -> Option<&str> {
        self.execution_ids.first().map(String::as_str)
    }
}

/// Senders running in the background.
#[derive(Debug)]
pub(crate) struct Load {
    /// 202s so far: scenarios time their faults by it.
    pub(crate) accepted: Arc<AtomicUsize>,
    handle: JoinHandle<Vec<RequestRecord>>,
}

impl Load {
    /// Sends one execution per marker with `concurrency` senders; each request is retried until
    /// a 202 or `deadline` after its first try, and nothing is tried once `load_deadline` has
    /// passed since the start (a system that stopped accepting must not hold the suite for
    /// requests × deadline / concurrency). With `rate`, the senders together start at most
    /// `rate` new requests a second, so that a run lasts long enough for faults to land in its
    /// middle; time lost in an outage is not made up with a burst afterwards.
    pub(crate) fn start(
        api: ApiClient,
        campaign: String,
        markers: Vec<String>,
        concurrency: usize,
        rate: Option<f64>,
        deadline: Duration,
        load_deadline: Duration,
    ) -> Self {
        let give_up_at = Instant::now() + load_deadline;
        let accepted = Arc::new(AtomicUsize::new(0));
        let queue: VecDeque<(usize, String)> = markers.into_iter().enumerate().collect();
        let queue = Arc::new(Mutex::new(queue));
        let records = Arc::new(Mutex::new(Vec::new()));
        let senders: Vec<JoinHandle<()>> = (0..concurrency)
            .map(|_| {
                let (api, campaign, queue, records, accepted) =
                    (api.clone(), campaign.clone(), Arc::clone(&queue), Arc::clone(&records), Arc::clone(&accepted));
                tokio::spawn(async move {
                    // Each sender's share of the rate; a missed tick delays the next ones.
                    #[allow(clippy::cast_precision_loss)]
                    let mut pace =
                        rate.map(|rate| tokio::time::interval(Duration::from_secs_f64(concurrency as f64 / rate)));
                    if let Some(pace) = pace.as_mut() {
                        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                    loop {
                        if let Some(pace) = pace.as_mut() {
                            pace.tick().await;
                        }
                        let Some((n, marker)) = queue.lock().await.pop_front() else { return };
                        let record = if Instant::now() < give_up_at {
                            let until = give_up_at.min(Instant::now() + deadline);
                            send_until_accepted(&api, &campaign, new_record(n, marker), until).await
                        } else {
                            let mut unsent = new_record(n, marker);
                            unsent.last_error = Some("never sent: the run's load deadline had passed".into());
                            unsent
                        };
                        if record.accepted {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        records.lock().await.push(record);
                    }
                })
            })
            .collect();
        let handle = tokio::spawn(async move {
            for sender in senders {
                sender.await.expect("a sender panicked");
            }
            std::mem::take(&mut *records.lock().await)
        });
        Self { accepted, handle }
    }

    /// Waits for every request to end (202, refused or deadline).
    pub(crate) async fn finish(self) -> Vec<RequestRecord> {
        self.handle.await.expect("the load task panicked")
    }
}

/// The request for the `n`th marker: its request id and recipient derive from it.
fn new_record(n: usize, marker: String) -> RequestRecord {
    RequestRecord {
        request_id: format!("req-{marker}"),
        recipient: format!("m{n}@example.com"),
        marker,
        ..RequestRecord::default()
    }
}

/// Tries `record`'s request until a 202, a refusal, or `until`.
async fn send_until_accepted(
    api: &ApiClient,
    campaign: &str,
    mut record: RequestRecord,
    until: Instant,
) -> RequestRecord {
    let started = Instant::now();
    loop {
        record.tries += 1;
        let wait = match api.execute(campaign, &record.request_id, &record.recipient, &record.marker).await {
            Ok(reply) => {
                if let Some(id) = reply.body["executionId"].as_str() {
                    record.execution_ids.push(id.to_string());
                }
                let retryable = reply.status.is_server_error()
                    || reply.status == StatusCode::CONFLICT
                    || reply.status == StatusCode::TOO_MANY_REQUESTS;
                if reply.status == StatusCode::ACCEPTED {
                    record.accepted = true;
                    record.waited = started.elapsed();
                    return record;
                } else if !retryable {
                    record.refused = Some(format!("{}: {}", reply.status, reply.body));
                    record.waited = started.elapsed();
                    return record;
                }
                record.last_error = Some(format!("{} {}", reply.status.as_u16(), reply.body["type"]));
                reply.retry_after.unwrap_or(Duration::from_millis(100))
            }
            Err(error) => {
                record.last_error = Some(error);
                Duration::from_millis(100)
            }
        };
        if Instant::now() + wait > until {
            record.waited = started.elapsed();
            return record;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Sends each accepted request once more, as a client that never saw its 202 would: the answer
/// must be the same execution id. Returns the requests whose answer differed (or never came).
pub(crate) async fn resend_and_compare(api: &ApiClient, campaign: &str, records: &[RequestRecord]) -> Vec<String> {
    let mut differing = Vec::new();
    for record in records.iter().filter(|r| r.accepted) {
        let reply = api.execute(campaign, &record.request_id, &record.recipient, &record.marker).await;
        let again = reply.ok().and_then(|reply| reply.body["executionId"].as_str().map(str::to_string));
        if again.as_deref() != record.execution_id() {
            differing.push(format!("{} → {:?} then {again:?}", record.request_id, record.execution_id()));
        }
    }
    differing
}
