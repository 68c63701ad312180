//! What a newcomer does first, as the README shows it: the cURL sample of each example campaign
//! filled in and sent, an `aep` recipient named by its address, and a status that says when no
//! worker is there to send.

use std::sync::Arc;

use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::worker::wait_for_status;

fn example(name: &str) -> Value {
    let path = format!("{}/../examples/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// The sample's body with every `<placeholder>` filled in as a reader would.
fn filled_in(sample: &Value, request_id: &str) -> Value {
    let text = serde_json::to_string(&sample["body"]).unwrap();
    let text = text
        .replace("<unique request id>", request_id)
        .replace("<email address>", "jane@example.com")
        .replace("<phone number, E.164: +33612345678>", "+33612345678")
        .replace("<device token>", "device-token-1");
    let filled: Value = serde_json::from_str(&text).unwrap();
    let left = serde_json::to_string(&filled).unwrap();
    // Context and profile placeholders (`<otp>`, `<firstName>`): any value will do.
    let filled = regex_free_fill(&left);
    serde_json::from_str(&filled).unwrap()
}

/// Replaces each remaining `"<name>"` string with `"sample-name"`.
fn regex_free_fill(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("\"<") {
        let Some(end) = rest[start..].find(">\"") else { break };
        out.push_str(&rest[..start]);
        out.push_str(&format!("\"sample-{}\"", &rest[start + 2..start + end]));
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_curl_sample_of_each_example_campaign_filled_in_is_accepted_and_sent() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    for (name, to) in
        [("otp-sms", "+33612345678"), ("password-reset-email", "jane@example.com"), ("push-alert", "device-token-1")]
    {
        let campaign = app.live_campaign(&example(name)).await;
        let sample = app.get(&format!("/campaigns/{campaign}/curl")).await;
        assert_eq!(sample.status, StatusCode::OK, "{name}: {}", sample.body);
        let command = sample.body["command"].as_str().unwrap();
        assert!(command.contains("/im/executions/unitary"), "{command}");
        let body = filled_in(&sample.body, &format!("sample-{name}"));
        let accepted = app.post("/im/executions/unitary", &body).await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED, "{name}: {body} answered {}", accepted.body);
        let execution = accepted.body["executionId"].as_str().unwrap().to_string();
        let recipient = wait_for_status(&app, &execution, "sent").await;
        assert_eq!(recipient["attempts"], 1, "{name}: {recipient}");
        // A push goes to the token's platform endpoint (its ARN ends with the token).
        let sent_to = provider.calls().last().map(|c| c.to.clone()).unwrap_or_default();
        assert!(sent_to == to || sent_to.ends_with(&format!("/{to}")), "{name}: sent to {sent_to}, not {to}");
    }
    worker.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn an_aep_recipient_named_by_its_address_needs_no_profile() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    // The password reset does not create profiles, and Jane has none.
    let email = app.live_campaign(&example("password-reset-email")).await;
    let body = json!({"requestId": "by-address", "campaignId": email, "recipients": [
        {"type": "aep", "namespace": "email", "userId": "jane@example.com", "context": {"resetUrl": "https://x.test/r"}}
    ]});
    let accepted = app.post("/im/executions/unitary", &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let execution = accepted.body["executionId"].as_str().unwrap().to_string();
    assert_eq!(wait_for_status(&app, &execution, "sent").await["attempts"], 1);
    assert_eq!(provider.calls().last().map(|c| c.to.clone()), Some("jane@example.com".into()));
    // The status shows the address masked, as for an external recipient.
    let status = app.get(&format!("/im/executions/{execution}")).await;
    assert!(!status.body.to_string().contains("jane@example.com"), "{}", status.body);

    // Another namespace still needs its profile, and the refusal says what to do.
    let crm = json!({"requestId": "crm", "campaignId": email, "recipients": [
        {"type": "aep", "namespace": "crm", "userId": "jane@example.com", "context": {"resetUrl": "https://x.test/r"}}
    ]});
    let refused = app.post("/im/executions/unitary", &crm).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "profile-not-found");
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(detail.contains("PUT /profiles/") && detail.contains("external"), "{detail}");
    // A profile in another namespace whose id is an address: masked in the status all the same.
    app.call(
        reqwest::Method::PUT,
        "/profiles/crm/john@example.com",
        Some(&app.key),
        Some(&json!({"emailAddress": "john@example.com"})),
    )
    .await;
    let crm = json!({"requestId": "crm-known", "campaignId": email, "recipients": [
        {"type": "aep", "namespace": "crm", "userId": "john@example.com", "context": {"resetUrl": "https://x.test/r"}}
    ]});
    let accepted = app.post("/im/executions/unitary", &crm).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let execution = accepted.body["executionId"].as_str().unwrap().to_string();
    let status = app.get(&format!("/im/executions/{execution}")).await;
    assert!(!status.body.to_string().contains("john@example.com"), "{}", status.body);
    // An id in an address namespace is masked whatever its spelling (this one is not E.164).
    let mut creating = example("otp-sms");
    creating["name"] = json!("otp-sms-creating");
    let otp = app.live_campaign(&creating).await;
    let loose = json!({"requestId": "loose-number", "campaignId": otp, "recipients": [
        {"type": "aep", "namespace": "phone", "userId": "0033612340010", "context": {"otp": "1"}}
    ]});
    let accepted = app.post("/im/executions/unitary", &loose).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let loose = app.get(&format!("/im/executions/{}", accepted.body["executionId"].as_str().unwrap())).await;
    assert!(!loose.body.to_string().contains("0033612340010"), "{}", loose.body);
    // Its address comes from the profile when the worker sends: the crm id is not an address.
    assert!(status.body["recipients"][0]["address"].is_null(), "{}", status.body);

    // A phone number in the `phone` namespace is an SMS address.
    let mut otp = example("otp-sms");
    otp["createNewProfiles"] = json!(false);
    let sms = app.live_campaign(&otp).await;
    let body = json!({"requestId": "by-number", "campaignId": sms, "recipients": [
        {"type": "aep", "namespace": "phone", "userId": "+33612345678", "context": {"otp": "123456"}}
    ]});
    let accepted = app.post("/im/executions/unitary", &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let execution = accepted.body["executionId"].as_str().unwrap().to_string();
    wait_for_status(&app, &execution, "sent").await;
    assert_eq!(provider.calls().last().map(|c| c.to.clone()), Some("+33612345678".into()));
    worker.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn with_no_worker_running_the_status_says_no_consumer_is_attached() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&example("otp-sms")).await;
    let body = json!({"requestId": "nobody-home", "campaignId": campaign, "recipients": [
        {"type": "external", "userId": "+33612345678", "context": {"otp": "123456"}}
    ]});
    let accepted = app.post("/im/executions/unitary", &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    let execution = accepted.body["executionId"].as_str().unwrap().to_string();
    let status = app.get(&format!("/im/executions/{execution}")).await;
    assert_eq!(status.body["recipients"][0]["status"], "queued", "{}", status.body);
    let queue = &status.body["queue"];
    assert_eq!(queue["name"], app.topology().queue(herald_core::Channel::Sms).as_str(), "{queue}");
    assert_eq!(queue["consumers"], 0, "{queue}");
    assert!(queue.get("messagesReady").is_none(), "a shared queue's depth would show other tenants' traffic");
    assert!(queue["waitingSeconds"].as_i64().is_some_and(|s| s >= 0), "{queue}");
    assert!(queue["warning"].as_str().is_some_and(|w| w.contains("no worker")), "{queue}");

    // Once a worker has sent it, the status is final and says nothing about the queue.
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider, fast_policy()).await;
    wait_for_status(&app, &execution, "sent").await;
    let status = app.get(&format!("/im/executions/{execution}")).await;
    assert!(status.body.get("queue").is_none(), "{}", status.body);
    // What the broker holds: the message was taken and acknowledged, nothing is left behind.
    let queue = app.topology().queue(herald_core::Channel::Sms);
    let started = std::time::Instant::now();
    while app.topology().count(&queue).await != 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{queue} did not drain");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    worker.stop().await;
    app.stop().await;
}
