//! Fairness between sandboxes on one channel: how long one OTP of sandbox B takes from its 202 to
//! its provider call while sandbox A's burst of 10,000 SMS is still queued.
//!
//! One process, the real broker and database: the API (ingest) and a worker at the production
//! defaults (concurrency 64, prefetch 200) sending through a fake provider that takes
//! `HERALD_BENCH_PROVIDER_MS` (default 50, about an SNS `Publish`) per call. First B's OTP alone
//! (the baseline), then A posts 500 executions of 20 recipients (10,000 messages) through the API
//! and, as soon as the last one is accepted, B posts one OTP; B's accept→sent time is the figure.
//! Run: `cargo bench -p herald-tests --bench fairness` (`HERALD_BENCH_MESSAGES`, default 10000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use herald_core::Scope;
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions};
use herald_worker::providers::{EmailMessage, Provider, ProviderResult, PushMessage, Receipt, SmsMessage};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// B's phone number; A's recipients use others.
const B_PHONE: &str = "+33700000001";

/// A provider that takes a fixed time per call and notes when B's number was sent to.
#[derive(Debug)]
struct Watching {
    latency: Duration,
    sent: AtomicU64,
    b_sent_at: Mutex<Vec<Instant>>,
}

impl Watching {
    async fn send(&self, to: &str) -> ProviderResult<Receipt> {
        tokio::time::sleep(self.latency).await;
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        if to == B_PHONE {
            self.b_sent_at.lock().unwrap().push(Instant::now());
        }
        Ok(Receipt { provider_message_id: format!("bench-{n}") })
    }

    fn b_sends(&self) -> usize {
        self.b_sent_at.lock().unwrap().len()
    }
}

impl Provider for Watching {
    fn send_email<'a>(&'a self, message: &'a EmailMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.send(&message.to))
    }
    fn send_sms<'a>(&'a self, message: &'a SmsMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.send(&message.to))
    }
    fn create_push_endpoint<'a>(&'a self, arn: &'a str, token: &'a str) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move { Ok(format!("{arn}/{token}")) })
    }
    fn send_push<'a>(&'a self, arn: &'a str, _message: &'a PushMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.send(arn))
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Posts B's OTP and returns its accept→sent time.
async fn b_otp(app: &TestApp, key: &str, campaign: &str, provider: &Watching, request_id: &str) -> Duration {
    let before = provider.b_sends();
    let body = json!({"requestId": request_id, "campaignId": campaign,
        "recipients": [{"type": "external", "userId": B_PHONE, "context": {"otp": "424242"}}]});
    let reply = app.call(Method::POST, "/im/executions/unitary", Some(key), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let accepted = Instant::now();
    while provider.b_sends() == before {
        assert!(accepted.elapsed() < Duration::from_secs(600), "B's OTP was never sent");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    *provider.b_sent_at.lock().unwrap().last().unwrap() - accepted
}

#[tokio::main]
async fn main() {
    let messages = env_number("HERALD_BENCH_MESSAGES", 10_000) as usize;
    let latency = Duration::from_millis(env_number("HERALD_BENCH_PROVIDER_MS", 50));
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let a_campaign = app.live_campaign(&otp_sms("burst")).await;
    let b_key = app.key_for("b", &Scope::ALL).await;
    let created = app.call(Method::POST, "/campaigns", Some(&b_key), Some(&otp_sms("otp"))).await;
    let b_campaign = created.body["id"].as_str().expect("B's campaign").to_string();
    let activated =
        app.call(Method::POST, &format!("/campaigns/{b_campaign}/activate"), Some(&b_key), Some(&Value::Null)).await;
    assert_eq!(activated.status, StatusCode::OK, "{}", activated.body);

    let provider = Arc::new(Watching { latency, sent: AtomicU64::new(0), b_sent_at: Mutex::default() });
    let worker = TestWorker::start_with(&app, provider.clone(), fast_policy(), 64, 200).await;

    let alone = b_otp(&app, &b_key, &b_campaign, &provider, "b-alone").await;

    // A's burst: executions of 20 recipients, 16 in flight, all accepted before B posts.
    let requests = messages.div_ceil(20);
    let started = Instant::now();
    let accepted: Vec<StatusCode> = futures_util::stream::iter(0..requests)
        .map(|n| {
            let app = &app;
            let campaign = a_campaign.clone();
            async move {
                let recipients: Vec<Value> = (0..20)
                    .map(|i| json!({"type": "external", "userId": format!("+336{:08}", n * 20 + i), "context": {"otp": "1"}}))
                    .collect();
                let body = json!({"requestId": format!("a-{n}"), "campaignId": campaign, "recipients": recipients});
                app.post("/im/executions/unitary", &body).await.status
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let burst_accepted = started.elapsed();
    let refused = accepted.iter().filter(|status| **status != StatusCode::ACCEPTED).count();
    let sent_before_b = provider.sent.load(Ordering::SeqCst);

    let behind_burst = b_otp(&app, &b_key, &b_campaign, &provider, "b-burst").await;
    let sent_when_b_sent = provider.sent.load(Ordering::SeqCst);
    while provider.sent.load(Ordering::SeqCst) < (messages + 2) as u64 - refused as u64 * 20 {
        assert!(started.elapsed() < Duration::from_secs(900), "A's burst never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    worker.stop().await;

    println!(
        "fairness benchmark: {messages} SMS of sandbox A, then 1 OTP of sandbox B; provider {} ms per call, \
         worker concurrency 64, prefetch 200",
        latency.as_millis()
    );
    println!("{:<52} {:>10}", "A's burst accepted in (s)", format!("{:.2}", burst_accepted.as_secs_f64()));
    println!("{:<52} {:>10}", "A's executions refused", refused);
    println!("{:<52} {:>10}", "A's messages sent before B posted", sent_before_b);
    println!("{:<52} {:>10}", "messages sent by the time B's OTP was sent", sent_when_b_sent);
    println!("{:<52} {:>10}", "B's OTP alone: accept->sent (ms)", alone.as_millis());
    println!("{:<52} {:>10}", "B's OTP behind A's burst: accept->sent (ms)", behind_burst.as_millis());
    println!("{:<52} {:>10}", "A's burst drained in (s)", format!("{:.2}", drained.as_secs_f64()));
}
