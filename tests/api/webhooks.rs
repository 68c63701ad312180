//! Customer feedback webhooks: one signed event per outcome, verified the documented way, nothing
//! lost while the receiver is down, 410 disables, and URLs that point inside are refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use herald_core::delivery::{Decision, ErrorClass, ProviderError};
use herald_core::feedback::parse_ses_event;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution, free_port};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::Method;
use serde_json::{Value, json};

use crate::feedback::{event_for, message_ids, notice_email};

const BOUNCE: &str = include_str!("../fixtures/ses/bounce.json");
const DELIVERY: &str = include_str!("../fixtures/ses/delivery.json");

/// What the receiver was sent: (webhook-id, webhook-timestamp, webhook-signature, body).
type Received = Arc<Mutex<Vec<(String, String, String, Vec<u8>)>>>;

#[derive(Clone)]
struct Receiver {
    received: Received,
    answer: Arc<AtomicU16>,
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    receiver.received.lock().unwrap().push((
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        body.to_vec(),
    ));
    StatusCode::from_u16(receiver.answer.load(Ordering::SeqCst)).unwrap()
}

async fn serve_receiver(port: u16, receiver: Receiver) {
    let router = Router::new().route("/hook", post(hook)).with_state(receiver);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the receiver's port is free");
    tokio::spawn(async move { axum::serve(listener, router).await });
}

/// README's verification, written independently of Herald's signer: HMAC-SHA256 keyed with the
/// base64 part of the secret over `id.timestamp.body`, compared with each `v1,` signature, and a
/// timestamp within five minutes.
fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    let expected = base64::engine::general_purpose::STANDARD.encode(aws_lc_rs::hmac::sign(&key, &signed).as_ref());
    let fresh = timestamp.parse::<i64>().is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= 300);
    fresh && signatures.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

/// `examples/verify-webhook.py` (python3, standard library) on one received event.
fn example_verifies(secret: &str, id: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    use std::io::Write;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/verify-webhook.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .args([secret, id, timestamp, signature])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs the README's example verifier");
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait().unwrap().success()
}

async fn execute(app: &TestApp, request_id: &str, campaign: &str, address: &str) -> String {
    let body = execution(request_id, campaign, &[(address, json!({"code": "1"}))]);
    let reply = app.post("/im/executions/unitary", &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["executionId"].as_str().unwrap().to_string()
}

async fn final_status(app: &TestApp, execution_id: &str) -> Value {
    let started = Instant::now();
    loop {
        let recipient = app.get(&format!("/im/executions/{execution_id}")).await.body["recipients"][0].clone();
        if recipient["status"] != "queued" {
            return recipient;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{recipient}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn options() -> TestOptions {
    let loopback = herald_core::feedback::ssrf::parse_networks(&["127.0.0.0/8".into()]).unwrap();
    TestOptions { webhook_allowed_networks: loopback, ..TestOptions::with_broker() }
}

#[tokio::test]
async fn every_outcome_arrives_signed_once_after_the_receiver_was_down_and_410_disables() {
    let app = TestApp::spawn_with(options()).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let configured = app.call(Method::PUT, "/webhooks/feedback", Some(&app.key), Some(&json!({"url": url}))).await;
    assert_eq!(configured.status, StatusCode::CREATED, "{}", configured.body);
    let secret = configured.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let shown = app.get("/webhooks/feedback").await.body;
    assert_eq!((&shown["enabled"], &shown["secret"]), (&json!(true), &Value::Null), "the secret is shown once");
    assert_eq!(shown["eventTypes"], json!(["sent", "delivered", "bounce", "complaint", "error", "excluded"]));

    let campaign = app.live_campaign(&notice_email("notice", false)).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, Arc::clone(&provider) as _, fast_policy()).await;
    // Nothing listens on the receiver's port for the first 30 s.
    let down_since = Instant::now();
    app.call(Method::PUT, "/suppressions/email/excluded@example.com", Some(&app.key), Some(&json!({}))).await;
    let excluded = execute(&app, "w1", &campaign, "excluded@example.com").await;
    assert_eq!(final_status(&app, &excluded).await["status"], "excluded");
    provider.script([Err(ProviderError::new(ErrorClass::Permanent, "MessageRejected", "rejected"))]);
    let failed = execute(&app, "w2", &campaign, "fail@example.com").await;
    assert_eq!(final_status(&app, &failed).await["status"], "failed");
    let sent = execute(&app, "w3", &campaign, "ok@example.com").await;
    assert_eq!(final_status(&app, &sent).await["status"], "sent");
    let id = message_ids(&app, &sent).await.remove(0);
    for fixture in [DELIVERY, BOUNCE] {
        let event = parse_ses_event(&event_for(fixture, &id, "ok@example.com")).unwrap().unwrap();
        app.store.record_feedback(&[event], chrono::Utc::now()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_since.elapsed())).await;
    let receiver = Receiver { received: Arc::default(), answer: Arc::new(AtomicU16::new(200)) };
    serve_receiver(port, receiver.clone()).await;

    let started = Instant::now();
    let events: HashMap<String, Value> = loop {
        let received = receiver.received.lock().unwrap().clone();
        let unique: HashMap<String, Value> =
            received.iter().map(|(id, _, _, body)| (id.clone(), serde_json::from_slice(body).unwrap())).collect();
        if unique.len() >= 5 {
            // Each event once, each signed as README says.
            assert_eq!(received.len(), 5, "one delivery per event");
            for (id, timestamp, signature, body) in &received {
                assert!(verify(&secret, id, timestamp, signature, body), "{id} does not verify");
                assert!(!verify(&secret, id, timestamp, signature, &[body.as_slice(), b" "].concat()));
            }
            // README's example verifier agrees, and refuses an altered body.
            let (id, timestamp, signature, body) = &received[0];
            assert!(example_verifies(&secret, id, timestamp, signature, body));
            assert!(!example_verifies(&secret, id, timestamp, signature, &[body.as_slice(), b" "].concat()));
            break unique;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "received after the outage: {received:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_status: HashMap<String, &Value> = events
        .values()
        .map(|e| (e["messageDeliveryFeedback"]["feedbackStatus"].as_str().unwrap().to_string(), e))
        .collect();
    let mut statuses: Vec<&str> = by_status.keys().map(String::as_str).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["bounce", "delivered", "error", "exclude", "sent"]);
    let sent_event = by_status["sent"];
    assert_eq!(sent_event["eventType"], "message.feedback");
    assert_eq!(
        (&sent_event["requestId"], &sent_event["sandbox"], &sent_event["channel"]),
        (&json!("w3"), &json!("a"), &json!("email"))
    );
    assert_eq!(sent_event["messageExecution"]["messageExecutionID"], json!(sent));
    assert_eq!(sent_event["messageExecution"]["campaignID"], json!(campaign));
    assert!(sent_event["messageExecution"]["campaignVersionID"].is_string());
    assert!(sent_event["identityMap"]["email"][0]["id"].as_str().is_some_and(|id| !id.contains("ok@")), "{sent_event}");
    assert_eq!(by_status["exclude"]["messageDeliveryFeedback"]["messageExclusion"]["reason"], "suppressed");
    assert_eq!(by_status["error"]["messageDeliveryFeedback"]["messageFailure"]["category"], "error");
    let bounce = &by_status["bounce"]["messageDeliveryFeedback"]["messageFailure"];
    assert_eq!((&bounce["type"], &bounce["code"]), (&json!("hard"), &json!("General")));
    assert!(events.keys().all(|id| id.starts_with("evt_")), "{:?}", events.keys());

    // A 410 disables the webhook: shown in GET, and nothing more is queued for it.
    receiver.answer.store(410, Ordering::SeqCst);
    let gone = execute(&app, "w4", &campaign, "ok2@example.com").await;
    assert_eq!(final_status(&app, &gone).await["status"], "sent");
    let started = Instant::now();
    loop {
        let shown = app.get("/webhooks/feedback").await.body;
        if shown["enabled"] == false {
            assert!(shown["disabledReason"].as_str().unwrap().contains("410"), "{shown}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = receiver.received.lock().unwrap().len();
    let after_gone = execute(&app, "w5", &campaign, "ok3@example.com").await;
    assert_eq!(final_status(&app, &after_gone).await["status"], "sent");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received.lock().unwrap().len(), before, "a disabled webhook gets nothing");

    // Every queue drained: the webhook events and their retries are all settled.
    let topology = app.topology();
    for queue in topology.topology.queues() {
        assert_eq!(topology.count(&queue).await, 0, "{queue} is not empty");
    }
    worker.stop().await;
}

#[tokio::test]
async fn urls_that_point_inside_are_refused_at_configuration_and_at_delivery() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[::127.0.0.2]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://example.com/hook\r\nX-Injected: 1",
        "  http://example.com/hook",
        "http://user:secret@example.com/hook",
        "ftp://example.com/hook",
        "not a url",
    ] {
        let reply = app.call(Method::PUT, "/webhooks/feedback", Some(&app.key), Some(&json!({"url": url}))).await;
        reply.assert_problem(StatusCode::BAD_REQUEST, "webhook-url-refused");
    }
    for body in [
        json!({"url": "https://example.com/h", "eventTypes": ["everything"]}),
        json!({"url": "https://example.com/h", "channels": []}),
    ] {
        let reply = app.call(Method::PUT, "/webhooks/feedback", Some(&app.key), Some(&body)).await;
        reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    }
    app.get("/webhooks/feedback").await.assert_problem(StatusCode::NOT_FOUND, "webhook-not-found");
    let reader = app.key_for("a", &[herald_core::Scope::CampaignsWrite]).await;
    let refused = app.call(Method::GET, "/webhooks/feedback", Some(&reader), None).await;
    refused.assert_problem(StatusCode::FORBIDDEN, "forbidden");

    // A URL stored before a rule, or a name that resolves inside since: the worker refuses it too.
    let stored = app
        .store
        .put_webhook(
            "a",
            ("http://10.255.255.1/hook", &["sent".into()], &["email".into()]),
            Some("whsec_AAAA"),
            chrono::Utc::now(),
        )
        .await;
    assert!(stored.unwrap().is_some());
    let webhooks = herald_worker::webhooks::Webhooks::new(
        app.store.clone(),
        app.clock.clone(),
        Arc::clone(&app.metrics),
        herald_worker::webhooks::WebhookSettings {
            allowed_networks: Vec::new(),
            max_attempts: 3,
            timeout: Duration::from_secs(1),
            tiers: vec![Duration::from_secs(1)],
        },
    );
    let body = json!({"sandbox": "a", "eventId": "evt_1"}).to_string();
    let decision = webhooks.deliver(body.as_bytes(), Some("evt_1"), 0).await;
    assert!(
        matches!(decision, Decision::DeadLetter { ref last_error, .. } if last_error.contains("not public")),
        "{decision:?}"
    );
}
