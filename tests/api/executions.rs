//! The execution API against real RabbitMQ and PostgreSQL: what is published, and every status
//! of the reference error table.

use chrono::Duration;
use herald_core::{Channel, Scope};
use herald_tests::fixtures::{otp_sms, password_reset_email};
use herald_tests::{TestApp, TestOptions, execution};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn live_otp(app: &TestApp) -> String {
    app.live_campaign(&otp_sms("otp")).await
}

#[tokio::test]
async fn an_accepted_execution_publishes_one_persistent_message_per_recipient() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    let body = json!({
        "requestId": "req-1",
        "campaignId": id,
        "context": {"resetUrl": "https://example.com/r/shared", "brand": "Acme"},
        "recipients": [
            {"type": "external", "userId": "jane@example.com", "profile": {"person": {"name": {"firstName": "Jane"}}},
             "context": {"resetUrl": "https://example.com/r/jane"}},
            {"type": "external", "userId": "john@example.com", "channelData": {"emailAddress": "john.doe@example.com"}}
        ]
    });
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .http
        .post(format!("{}/im/executions/unitary", app.address))
        .bearer_auth(&app.key)
        .header("traceparent", traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["requestId"], "req-1");
    let execution_id = accepted["executionId"].as_str().unwrap().to_string();

    let messages = app.topology().drain(&app.topology().queue(Channel::Email)).await;
    assert_eq!(messages.len(), 2);
    let jane = &messages[0];
    assert_eq!(jane.message_id, format!("{execution_id}/0"));
    assert_eq!(jane.delivery_mode, Some(2), "persistent");
    let header = |name: &str| match jane.headers.inner().get(name) {
        Some(lapin::types::AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(header("traceparent"), traceparent, "the caller's trace continues through the broker");
    assert_eq!(header("x-herald-execution-id"), execution_id);
    assert_eq!(header("x-herald-campaign-id"), id);
    let envelope = &jane.body;
    assert_eq!(envelope["version"], 1);
    assert_eq!(envelope["executionId"], execution_id.as_str());
    assert_eq!(envelope["requestId"], "req-1");
    assert_eq!(envelope["campaignId"], id.as_str());
    assert_eq!(envelope["sandbox"], "a");
    assert_eq!(envelope["channel"], "email");
    assert_eq!(envelope["recipientIndex"], 0);
    assert_eq!(envelope["recipient"]["userId"], "jane@example.com");
    assert_eq!(envelope["context"], json!({"resetUrl": "https://example.com/r/jane", "brand": "Acme"}));
    assert_eq!(envelope["profile"], json!({"person": {"name": {"firstName": "Jane"}}}));
    assert_eq!(envelope["acceptedAt"], accepted["createdAt"]);
    let accepted_at: chrono::DateTime<chrono::Utc> = serde_json::from_value(envelope["acceptedAt"].clone()).unwrap();
    let expires_at: chrono::DateTime<chrono::Utc> = serde_json::from_value(envelope["expiresAt"].clone()).unwrap();
    assert_eq!(expires_at - accepted_at, Duration::seconds(900), "messageTtlSeconds of the campaign");
    assert_eq!(messages[1].body["context"], json!({"resetUrl": "https://example.com/r/shared", "brand": "Acme"}));
    assert_eq!(messages[1].body["recipient"]["channelData"]["emailAddress"], "john.doe@example.com");
}

#[tokio::test]
async fn the_execution_status_lists_each_recipient_as_queued_with_a_masked_address() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = live_otp(&app).await;
    let reply =
        app.post("/im/executions/unitary", &execution("s-1", &id, &[("+33612345678", json!({"otp": "1"}))])).await;
    let execution_id = reply.body["executionId"].as_str().unwrap();
    let status = app.get(&format!("/im/executions/{execution_id}")).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.body);
    assert_eq!(status.body["state"], "accepted");
    assert_eq!(status.body["campaignId"], id.as_str());
    let recipient = &status.body["recipients"][0];
    assert_eq!((recipient["status"].as_str(), recipient["attempts"].as_i64()), (Some("queued"), Some(0)));
    assert_eq!(recipient["address"], "+33*******78");
    assert_eq!(recipient["userId"], "+33*******78", "an external recipient's user id is its address");
    assert!(!status.body.to_string().contains("+33612345678"));

    let other = app.key_for("b", &Scope::ALL).await;
    let hidden = app.call(Method::GET, &format!("/im/executions/{execution_id}"), Some(&other), None).await;
    hidden.assert_problem(StatusCode::NOT_FOUND, "execution-not-found");
}

#[tokio::test]
async fn invalid_executions_are_400_with_the_ids_in_the_report() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = live_otp(&app).await;
    let many: Vec<(String, Value)> = (0..21).map(|i| (format!("+3361234{i:04}"), json!({"otp": "1"}))).collect();
    let many: Vec<(&str, Value)> = many.iter().map(|(u, c)| (u.as_str(), c.clone())).collect();
    let cases = [
        execution("v-0", &id, &[]),
        execution("v-21", &id, &many),
        execution("v-dup", &id, &[("+33612345678", json!({"otp": "1"})), ("+33612345678", json!({"otp": "2"}))]),
        execution("v-addr", &id, &[("not-a-phone", json!({"otp": "1"}))]),
        execution("v-sys", &id, &[("+33612345678", json!({"otp": "1", "system": {"x": 1}}))]),
        execution("v-missing", &id, &[("+33612345678", json!({"otpp": "1"}))]),
        json!({"requestId": "v-type", "campaignId": id, "recipients": "nope"}),
        json!({"requestId": "v-unknown", "campaignId": id, "recipients": [], "extra": true}),
    ];
    for body in cases {
        let reply = app.post("/im/executions/unitary", &body).await;
        reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
        assert_eq!(reply.body["report"]["additionalContext"]["requestId"], body["requestId"], "{}", reply.body);
        assert_eq!(reply.body["report"]["additionalContext"]["campaignId"], id.as_str());
    }
    let missing = app
        .post("/im/executions/unitary", &execution("v-missing", &id, &[("+33612345678", json!({"otpp": "1"}))]))
        .await;
    assert!(missing.body["errors"][0]["detail"].as_str().unwrap().contains("otp"), "{}", missing.body);
    assert_eq!(app.topology().count(&app.topology().queue(Channel::Sms)).await, 0, "nothing invalid was published");
}

#[tokio::test]
async fn credentials_and_campaign_state_are_checked_at_the_door() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = live_otp(&app).await;
    let body = execution("d-1", &id, &[("+33612345678", json!({"otp": "1"}))]);

    app.call(Method::POST, "/im/executions/unitary", None, Some(&body))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    let manager = app.key_for("a", &[Scope::CampaignsRead, Scope::CampaignsWrite]).await;
    app.call(Method::POST, "/im/executions/unitary", Some(&manager), Some(&body))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let other = app.key_for("b", &Scope::ALL).await;
    app.call(Method::POST, "/im/executions/unitary", Some(&other), Some(&body))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");
    let unknown = execution("d-2", &uuid::Uuid::new_v4().to_string(), &[("+33612345678", json!({"otp": "1"}))]);
    app.post("/im/executions/unitary", &unknown).await.assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");

    let draft = app.create_campaign(&otp_sms("draft")).await;
    let reply =
        app.post("/im/executions/unitary", &execution("d-3", &draft, &[("+33612345678", json!({"otp": "1"}))])).await;
    reply.assert_problem(StatusCode::CONFLICT, "campaign-not-live");
    assert_eq!(reply.body["campaignStatus"], "draft");

    app.post(&format!("/campaigns/{id}/stop"), &Value::Null).await;
    let reply = app.post("/im/executions/unitary", &body).await;
    reply.assert_problem(StatusCode::CONFLICT, "campaign-not-live");
    assert_eq!(reply.body["campaignStatus"], "stopped");
}

#[tokio::test]
async fn executions_outside_the_schedule_are_409() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let now = herald_core::Clock::now(app.clock.as_ref());
    let mut document = otp_sms("windowed");
    document["schedule"] = json!({"startDate": now + Duration::hours(1), "endDate": now + Duration::hours(2)});
    let id = app.live_campaign(&document).await;
    let body = |request_id: &str| execution(request_id, &id, &[("+33612345678", json!({"otp": "1"}))]);

    let early = app.post("/im/executions/unitary", &body("w-1")).await;
    early.assert_problem(StatusCode::CONFLICT, "campaign-outside-schedule");
    app.clock.advance(Duration::minutes(90));
    assert_eq!(app.post("/im/executions/unitary", &body("w-2")).await.status, StatusCode::ACCEPTED);
    app.clock.advance(Duration::minutes(30));
    let late = app.post("/im/executions/unitary", &body("w-3")).await;
    late.assert_problem(StatusCode::CONFLICT, "campaign-outside-schedule");
    assert_eq!(late.body["campaignStatus"], "completed");
}

#[tokio::test]
async fn unknown_profiles_fail_when_the_campaign_does_not_create_them() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = live_otp(&app).await;
    app.call(Method::PUT, "/profiles/phone/known", Some(&app.key), Some(&json!({"phoneNumber": "+33612345678"}))).await;
    let body = json!({"requestId": "p-1", "campaignId": id, "recipients": [
        {"type": "aep", "userId": "known", "context": {"otp": "1"}},
        {"type": "aep", "userId": "ghost", "context": {"otp": "1"}}
    ]});
    let reply = app.post("/im/executions/unitary", &body).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "profile-not-found");
    assert_eq!(reply.body["userIds"], json!(["ghost"]));

    let mut creating = otp_sms("creating");
    creating["createNewProfiles"] = json!(true);
    let creating = app.live_campaign(&creating).await;
    let mut body = body.clone();
    body["campaignId"] = json!(creating);
    assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn an_oversize_body_is_413() {
    let app = TestApp::spawn_with(TestOptions { max_body_bytes: 1024 * 1024, ..TestOptions::with_broker() }).await;
    let id = live_otp(&app).await;
    let body = execution("big", &id, &[("+33612345678", json!({"otp": "1", "blob": "x".repeat(1024 * 1024)}))]);
    app.post("/im/executions/unitary", &body).await.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
}

#[tokio::test]
async fn without_a_broker_executions_are_503_with_retry_after_and_nothing_is_accepted() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = TestOptions {
        amqp_url: Some(format!("amqp://guest:guest@127.0.0.1:{closed}/%2f")),
        ..TestOptions::with_broker()
    };
    let app = TestApp::spawn_with(options).await;
    let id = live_otp(&app).await;
    let reply =
        app.post("/im/executions/unitary", &execution("o-1", &id, &[("+33612345678", json!({"otp": "1"}))])).await;
    reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.body["report"]["additionalContext"]["requestId"], "o-1");
    let ready = app.call(Method::GET, "/readyz", None, None).await;
    ready.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}
