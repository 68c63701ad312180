//! End to end through the real AWS SDK clients against moto: execute → queue → worker → SES/SNS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_tests::fixtures::{otp_sms, password_reset_email};
use herald_tests::moto::Moto;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions};
use herald_worker::providers::aws::AwsProvider;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn sent_from(moto: &Moto, pointer: &str, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let data = moto.data().await;
        let items = data.pointer(pointer).and_then(Value::as_array).cloned().unwrap_or_default();
        if items.len() >= count {
            return items;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "moto recorded {} at {pointer}, expected {count}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn execute(app: &TestApp, body: Value) -> String {
    let reply = app.post("/im/executions/unitary", &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["executionId"].as_str().unwrap().to_string()
}

async fn wait_sent(app: &TestApp, execution_id: &str) -> Value {
    let started = Instant::now();
    loop {
        let recipient = app.get(&format!("/im/executions/{execution_id}")).await.body["recipients"][0].clone();
        if recipient["status"] == "sent" {
            return recipient;
        }
        assert!(recipient["status"] == "queued", "{recipient}");
        assert!(started.elapsed() < Duration::from_secs(30), "{recipient}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_password_reset_email_arrives_in_ses_with_the_url_and_the_first_name() {
    let moto = Moto::start().await;
    moto.verify_email_identity("no-reply@example.com").await;
    let config = moto.sdk_config().await;
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&password_reset_email("reset")).await;
    app.call(
        Method::PUT,
        "/profiles/email/jane",
        Some(&app.key),
        Some(&json!({
            "emailAddress": "jane@example.com", "attributes": {"person": {"name": {"firstName": "Jane"}}}
        })),
    )
    .await;
    let worker = TestWorker::start(&app, Arc::new(AwsProvider::new(&config)), fast_policy()).await;
    let execution_id = execute(&app, json!({"requestId": "r1", "campaignId": campaign, "recipients": [
        {"type": "aep", "namespace": "email", "userId": "jane", "context": {"resetUrl": "https://example.com/r/abc123"}}
    ]}))
    .await;
    let messages = sent_from(&moto, "/ses/Message", 1).await;
    let message = &messages[0];
    assert_eq!(message["destinations"]["ToAddresses"], json!(["jane@example.com"]));
    assert_eq!(message["source"], "\"Example\" <no-reply@example.com>");
    assert_eq!(message["subject"], "Reset your password, Jane");
    let body = message["body"].as_str().unwrap();
    assert!(body.contains("https://example.com/r/abc123") && body.contains("Hi Jane"), "{body}");
    let recipient = wait_sent(&app, &execution_id).await;
    assert_eq!(recipient["attempts"], 1);
    worker.stop().await;
}

#[tokio::test]
async fn an_otp_sms_arrives_in_sns() {
    let moto = Moto::start().await;
    let config = moto.sdk_config().await;
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let worker = TestWorker::start(&app, Arc::new(AwsProvider::new(&config)), fast_policy()).await;
    let execution_id =
        execute(&app, herald_tests::execution("r1", &campaign, &[("+33612345678", json!({"otp": "482913"}))])).await;
    let sms = sent_from(&moto, "/sns/SMS", 1).await;
    assert_eq!(
        (sms[0]["phone_number"].as_str(), sms[0]["message"].as_str()),
        (Some("+33612345678"), Some("Your code is 482913"))
    );
    wait_sent(&app, &execution_id).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_push_to_a_registered_token_arrives_through_a_platform_endpoint_created_once() {
    let moto = Moto::start().await;
    let config = moto.sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&config);
    let application = sns
        .create_platform_application()
        .name("herald-android")
        .platform("GCM")
        .attributes("PlatformCredential", "server-key")
        .send()
        .await
        .unwrap()
        .platform_application_arn()
        .unwrap()
        .to_string();
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app
        .live_campaign(&json!({
            "name": "shipped",
            "channel": "push",
            "identityNamespace": "crm",
            "surface": {"platformApplicationArn": {"fcm": application}},
            "content": {"title": "Order {{ context.orderId }}", "body": "Hi {{ profile.firstName }}, it shipped", "data": {"orderId": "{{ context.orderId }}"}}
        }))
        .await;
    app.call(
        Method::PUT,
        "/profiles/crm/u-42",
        Some(&app.key),
        Some(&json!({
            "attributes": {"firstName": "Jane"}, "pushTokens": [{"token": "device-token-1", "platform": "fcm"}]
        })),
    )
    .await;
    let worker = TestWorker::start(&app, Arc::new(AwsProvider::new(&config)), fast_policy()).await;
    for (request, order) in [("r1", "A-1"), ("r2", "A-2")] {
        let body = json!({"requestId": request, "campaignId": campaign, "recipients": [{"type": "aep", "userId": "u-42", "context": {"orderId": order}}]});
        let execution_id = execute(&app, body).await;
        wait_sent(&app, &execution_id).await;
    }
    let endpoints = sent_from(&moto, "/sns/PlatformEndpoint", 1).await;
    assert_eq!(endpoints.len(), 1, "the endpoint is created once and reused");
    assert_eq!(endpoints[0]["token"], "device-token-1");
    let messages: Vec<Value> = endpoints[0]["messages"]
        .as_object()
        .unwrap()
        .values()
        .map(|m| serde_json::from_str(m.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(messages.len(), 2);
    let gcm: Value = serde_json::from_str(
        messages.iter().find(|m| m["GCM"].as_str().unwrap().contains("A-1")).unwrap()["GCM"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(gcm["notification"], json!({"title": "Order A-1", "body": "Hi Jane, it shipped"}));
    assert_eq!(gcm["data"], json!({"orderId": "A-1"}));
    worker.stop().await;
}
