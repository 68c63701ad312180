//! `POST /feedback/sns`: SNS's HTTPS push, with signatures made by a test certificate (openssl)
//! served on loopback. A verified notification is recorded; an altered body, an altered
//! signature, a certificate from a host not allowed, an unsigned message or another topic get 403
//! and record nothing; a subscription confirmation is confirmed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use base64::Engine;
use herald_api::feedback::SnsPushSettings;
use herald_core::feedback::sns::SnsMessage;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::feedback::{event_for, notice_email};

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";
const BOUNCE: &str = include_str!("../fixtures/ses/bounce.json");
const DELIVERY: &str = include_str!("../fixtures/ses/delivery.json");

/// A key and a self-signed certificate made by openssl, and a loopback server for it.
struct Signer {
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`, serving `/cert.pem` and recording `/confirm?Token=`.
    origin: String,
    confirmed: Arc<Mutex<Vec<String>>>,
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let output = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|error| {
        panic!("cannot run openssl ({error}); it makes the test's signing certificate (apt-get install openssl)")
    });
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

async fn serve_certificate(pem: Vec<u8>, confirmed: Arc<Mutex<Vec<String>>>) -> String {
    let router = Router::new()
        .route("/cert.pem", get(move || async move { pem.clone() }))
        .route(
            "/confirm",
            get(
                |State(seen): State<Arc<Mutex<Vec<String>>>>,
                 Query(query): Query<std::collections::HashMap<String, String>>| async move {
                    seen.lock().unwrap().push(query.get("Token").cloned().unwrap_or_default());
                    "<ConfirmSubscriptionResponse/>"
                },
            ),
        )
        .with_state(confirmed);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    origin
}

impl Signer {
    async fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sns-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=sns.us-east-1.amazonaws.com",
            ],
            &dir,
        );
        let confirmed = Arc::new(Mutex::new(Vec::new()));
        let origin = serve_certificate(std::fs::read(dir.join("cert.pem")).unwrap(), Arc::clone(&confirmed)).await;
        Self { dir, origin, confirmed }
    }

    /// `message` signed with version `version` (1: SHA1withRSA, 2: SHA256withRSA).
    fn sign(&self, message: &mut Value, version: &str) {
        message["SignatureVersion"] = json!(version);
        message["SigningCertURL"] = json!(format!("{}/cert.pem", self.origin));
        let parsed: SnsMessage = serde_json::from_value(message.clone()).unwrap();
        let text = self.dir.join(format!("to-sign-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&text, parsed.string_to_sign().unwrap()).unwrap();
        let digest = if version == "1" { "-sha1" } else { "-sha256" };
        let signature = openssl(&["dgst", digest, "-sign", "key.pem", text.to_str().unwrap()], &self.dir);
        message["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(signature));
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn notification(id: &str, body: &str) -> Value {
    json!({"Type": "Notification", "MessageId": id, "TopicArn": TOPIC, "Subject": "Amazon SES Email Event Notification",
           "Message": body, "Timestamp": now(),
           "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"})
}

async fn push(app: &TestApp, message: &Value) -> (StatusCode, Value) {
    let reply = app
        .http
        .post(format!("{}/feedback/sns", app.address))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", message["Type"].as_str().unwrap_or_default())
        .body(message.to_string())
        .send()
        .await
        .unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap_or(Value::Null))
}

async fn feedback_of(app: &TestApp, execution_id: &str) -> Value {
    app.get(&format!("/im/executions/{execution_id}")).await.body["recipients"][0]["feedback"].clone()
}

#[tokio::test]
async fn only_signed_notifications_from_the_configured_topic_are_recorded() {
    let signer = Signer::start().await;
    // Another loopback server holding the same certificate: right key, host not allowed.
    let other_origin = serve_certificate(std::fs::read(signer.dir.join("cert.pem")).unwrap(), Arc::default()).await;
    let origin = regex::Regex::new(&format!("^{}$", regex::escape(&signer.origin))).unwrap();
    let options =
        TestOptions { sns: Some(SnsPushSettings { topics: vec![TOPIC.into()], origin }), ..TestOptions::with_broker() };
    let app = TestApp::spawn_with(options).await;
    let campaign = app.live_campaign(&notice_email("notice", false)).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider, fast_policy()).await;
    let code = json!({"code": "1"});
    let sent = {
        let reply =
            app.post("/im/executions/unitary", &execution("p1", &campaign, &[("bounce@example.com", code)])).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        reply.body["executionId"].as_str().unwrap().to_string()
    };
    let started = Instant::now();
    while app.get(&format!("/im/executions/{sent}")).await.body["recipients"][0]["status"] != "sent" {
        assert!(started.elapsed() < Duration::from_secs(20), "not sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bounce = event_for(BOUNCE, "fake-0", "bounce@example.com");

    // Refused, and nothing recorded: each one alone would have recorded the bounce.
    let mut unsigned = notification("n1", &bounce);
    assert_eq!(push(&app, &unsigned).await.0, StatusCode::FORBIDDEN);
    let mut altered_body = notification("n1", &bounce);
    signer.sign(&mut altered_body, "2");
    altered_body["Message"] = json!(bounce.replace("Permanent", "Transient"));
    let (status, problem) = push(&app, &altered_body).await;
    assert_eq!(
        (status, &problem["type"]),
        (StatusCode::FORBIDDEN, &json!("https://herald.dev/errors/sns-signature-invalid"))
    );
    let mut altered_signature = notification("n1", &bounce);
    signer.sign(&mut altered_signature, "2");
    let mut bytes =
        base64::engine::general_purpose::STANDARD.decode(altered_signature["Signature"].as_str().unwrap()).unwrap();
    bytes[10] ^= 1;
    altered_signature["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    assert_eq!(push(&app, &altered_signature).await.0, StatusCode::FORBIDDEN);
    let mut other_host = notification("n1", &bounce);
    signer.sign(&mut other_host, "2");
    other_host["SigningCertURL"] = json!(format!("{other_origin}/cert.pem"));
    assert_eq!(push(&app, &other_host).await.0, StatusCode::FORBIDDEN, "a certificate from a host not allowed");
    let mut other_topic = notification("n1", &bounce);
    other_topic["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:attacker");
    signer.sign(&mut other_topic, "2");
    let (status, problem) = push(&app, &other_topic).await;
    assert_eq!(
        (status, &problem["type"]),
        (StatusCode::FORBIDDEN, &json!("https://herald.dev/errors/sns-topic-not-allowed"))
    );
    unsigned["SignatureVersion"] = json!("3");
    assert_eq!(push(&app, &unsigned).await.0, StatusCode::FORBIDDEN);
    let (status, problem) = push(&app, &json!({"hello": "world"})).await;
    assert_eq!(
        (status, &problem["type"]),
        (StatusCode::BAD_REQUEST, &json!("https://herald.dev/errors/sns-message-invalid"))
    );
    // Signed, but a day and a half old: a replay, refused.
    let mut stale = notification("n1", &bounce);
    stale["Timestamp"] = json!((chrono::Utc::now() - chrono::Duration::hours(36)).to_rfc3339());
    signer.sign(&mut stale, "2");
    let (status, problem) = push(&app, &stale).await;
    assert_eq!(
        (status, &problem["type"]),
        (StatusCode::FORBIDDEN, &json!("https://herald.dev/errors/sns-message-stale"))
    );
    assert_eq!(feedback_of(&app, &sent).await, Value::Null, "nothing recorded");
    assert!(app.store.get_suppression("a", herald_core::Channel::Email, "bounce@example.com").await.unwrap().is_none());
    // Signed and fresh, but about other recipients than the message's own: unmatched, no one suppressed.
    let mut others = notification("n5", &event_for(BOUNCE, "fake-0", "victim@example.com"));
    signer.sign(&mut others, "2");
    assert_eq!(push(&app, &others).await.1["outcome"], "unmatched");
    assert_eq!(feedback_of(&app, &sent).await, Value::Null);
    assert!(app.store.get_suppression("a", herald_core::Channel::Email, "victim@example.com").await.unwrap().is_none());

    // Signed (version 1, SHA1withRSA): recorded; the same event again (version 2): counted once.
    let mut signed = notification("n2", &bounce);
    signer.sign(&mut signed, "1");
    let (status, body) = push(&app, &signed).await;
    assert_eq!((status, &body["outcome"]), (StatusCode::OK, &json!("recorded")), "{body}");
    let mut again = notification("n3", &bounce);
    signer.sign(&mut again, "2");
    assert_eq!(push(&app, &again).await.1["outcome"], "duplicate");
    assert_eq!(feedback_of(&app, &sent).await["status"], "bounced");
    assert!(app.store.get_suppression("a", herald_core::Channel::Email, "bounce@example.com").await.unwrap().is_some());
    // A weaker event after it (a Delivery) neither moves the status back nor counts: each outcome
    // counts once per message, so the rates stay fractions of the messages sent.
    let mut delivery = notification("n4", &event_for(DELIVERY, "fake-0", "bounce@example.com"));
    signer.sign(&mut delivery, "2");
    assert_eq!(push(&app, &delivery).await.1["outcome"], "recorded");
    assert_eq!(feedback_of(&app, &sent).await["status"], "bounced");
    let report = app.get(&format!("/campaigns/{campaign}/report")).await.body;
    assert_eq!(
        (&report["channels"][0]["bounces"]["total"], &report["channels"][0]["delivered"]),
        (&json!(1), &json!(0))
    );

    // A subscription confirmation: its SubscribeURL is visited, once it verifies.
    let mut confirmation = json!({"Type": "SubscriptionConfirmation", "MessageId": "c1", "TopicArn": TOPIC, "Token": "tok-123",
        "Message": "You have chosen to subscribe to the topic", "Timestamp": now(),
        "SubscribeURL": format!("{}/confirm?Action=ConfirmSubscription&Token=tok-123", signer.origin)});
    signer.sign(&mut confirmation, "1");
    let (status, body) = push(&app, &confirmation).await;
    assert_eq!((status, &body["confirmed"]), (StatusCode::OK, &json!(true)), "{body}");
    assert_eq!(*signer.confirmed.lock().unwrap(), vec!["tok-123".to_string()]);
    // One whose SubscribeURL points elsewhere is not visited.
    let mut elsewhere = confirmation.clone();
    elsewhere["SubscribeURL"] = json!(format!("{other_origin}/confirm?Token=tok-999"));
    signer.sign(&mut elsewhere, "1");
    assert_eq!(push(&app, &elsewhere).await.0, StatusCode::FORBIDDEN);
    assert_eq!(signer.confirmed.lock().unwrap().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn without_configured_topics_the_endpoint_is_off() {
    let app = TestApp::spawn().await;
    let (status, problem) = push(&app, &notification("n1", BOUNCE)).await;
    assert_eq!(
        (status, &problem["type"]),
        (StatusCode::NOT_FOUND, &json!("https://herald.dev/errors/feedback-push-disabled"))
    );
}
