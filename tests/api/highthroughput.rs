//! `POST /im/executions/highthroughput`: only for campaigns marked `highThroughput`, only external
//! recipients, never a profile; the review keeps `profile.*` out of such a campaign's content.

use std::sync::Arc;

use herald_core::Channel;
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{Reply, TestApp, TestOptions, execution};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::worker::wait_for_status;

const HIGH_THROUGHPUT: &str = "/im/executions/highthroughput";

/// The OTP SMS campaign, marked high throughput.
fn high_throughput_otp(name: &str) -> Value {
    let mut document = otp_sms(name);
    document["highThroughput"] = json!(true);
    document
}

/// Creates the campaign and tries to activate it; returns the refusal, after checking that the
/// campaign is still a draft.
async fn refused_activation(app: &TestApp, document: &Value) -> Reply {
    let id = app.create_campaign(document).await;
    let reply = app.post(&format!("/campaigns/{id}/activate"), &Value::Null).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "review-failed");
    assert_eq!(app.get(&format!("/campaigns/{id}")).await.body["status"], "draft", "a failed review changes nothing");
    reply
}

#[tokio::test]
async fn the_high_throughput_endpoint_refuses_a_campaign_not_marked_high_throughput_with_409() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&otp_sms("standard")).await;
    let body = execution("h-1", &id, &[("+33612345678", json!({"otp": "1"}))]);

    let reply = app.post(HIGH_THROUGHPUT, &body).await;
    reply.assert_problem(StatusCode::CONFLICT, "campaign-not-high-throughput");
    let detail = reply.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("\"highThroughput\": true") && detail.contains("profile.*"), "{}", reply.body);
    assert_eq!(reply.body["report"]["additionalContext"]["requestId"], "h-1");
    assert_eq!(reply.body["report"]["additionalContext"]["campaignId"], id.as_str());
    assert_eq!(app.topology().count(&app.topology().queue(Channel::Sms)).await, 0, "nothing was published");
    // The refusal claimed nothing: the same request id is still free on the unitary endpoint.
    assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_high_throughput_endpoint_has_the_scopes_and_the_campaign_checks_of_the_unitary_one() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&high_throughput_otp("fast")).await;
    let body = execution("h-2", &id, &[("+33612345678", json!({"otp": "1"}))]);
    app.call(Method::POST, HIGH_THROUGHPUT, None, Some(&body))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    let manager = app.key_for("a", &[herald_core::Scope::CampaignsRead, herald_core::Scope::CampaignsWrite]).await;
    app.call(Method::POST, HIGH_THROUGHPUT, Some(&manager), Some(&body))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let other = app.key_for("b", &herald_core::Scope::ALL).await;
    app.call(Method::POST, HIGH_THROUGHPUT, Some(&other), Some(&body))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");
    app.post(&format!("/campaigns/{id}/stop"), &Value::Null).await;
    app.post(HIGH_THROUGHPUT, &body).await.assert_problem(StatusCode::CONFLICT, "campaign-not-live");
}

#[tokio::test]
async fn an_aep_recipient_is_refused_with_its_pointer_and_every_other_problem_at_once() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&high_throughput_otp("fast")).await;
    let body = json!({"requestId": "h-3", "campaignId": id, "recipients": [
        {"type": "external", "userId": "+33612345670", "context": {"otp": "1"}},
        {"type": "aep", "namespace": "phone", "userId": "+33612345671", "context": {"otp": "1"}},
        {"type": "external", "userId": "not-a-phone", "context": {"otp": "1"}}
    ]});

    let reply = app.post(HIGH_THROUGHPUT, &body).await;
    // A field error like every other one of the body: 400 `validation`, each with its pointer.
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    let errors = reply.body["errors"].as_array().unwrap();
    let pointers: Vec<&str> = errors.iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, ["/recipients/1/type", "/recipients/2/userId"], "{}", reply.body);
    let detail = errors[0]["detail"].as_str().unwrap();
    assert!(detail.contains("the high-throughput endpoint takes external recipients only"), "{detail}");
    assert_eq!(reply.body["report"]["additionalContext"]["requestId"], "h-3");
    assert_eq!(app.topology().count(&app.topology().queue(Channel::Sms)).await, 0, "nothing was published");
}

#[tokio::test]
async fn a_high_throughput_campaign_reading_a_profile_fails_review_on_the_field_that_reads_it() {
    let app = TestApp::spawn().await;
    let mut document = high_throughput_otp("personal");
    document["content"]["body"] = json!("Hi {{ profile.firstName }}, your code is {{ context.otp }}");

    let reply = refused_activation(&app, &document).await;
    let problems = reply.body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{}", reply.body);
    assert_eq!(problems[0]["code"], "high-throughput-profile");
    assert_eq!(problems[0]["pointer"], "/content/body");
    let detail = problems[0]["detail"].as_str().unwrap();
    assert!(detail.starts_with("a high-throughput campaign has no profiles"), "{detail}");
    assert!(detail.contains("`profile.firstName`") && detail.contains("use context.* instead"), "{detail}");

    // Without the mark the same content is a valid campaign.
    document["highThroughput"] = json!(false);
    document["name"] = json!("personal, standard");
    app.live_campaign(&document).await;
}

#[tokio::test]
async fn a_high_throughput_campaign_that_creates_profiles_fails_review() {
    let app = TestApp::spawn().await;
    let mut document = high_throughput_otp("creating");
    document["createNewProfiles"] = json!(true);

    let reply = refused_activation(&app, &document).await;
    let problems = reply.body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{}", reply.body);
    assert_eq!(problems[0]["code"], "high-throughput-create-profiles");
    assert_eq!(problems[0]["pointer"], "/createNewProfiles");
}

#[tokio::test]
async fn a_high_throughput_otp_to_an_external_recipient_is_sent_and_no_profile_is_created() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&high_throughput_otp("fast")).await;
    assert_eq!(app.get(&format!("/campaigns/{id}")).await.body["liveVersion"]["definition"]["highThroughput"], true);
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let body = execution("h-ok", &id, &[("+33612345678", json!({"otp": "482913"}))]);

    let reply = app.post(HIGH_THROUGHPUT, &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let execution_id = reply.body["executionId"].as_str().unwrap().to_string();
    let recipient = wait_for_status(&app, &execution_id, "sent").await;
    assert_eq!(recipient["attempts"], 1);
    let calls = provider.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].to.as_str(), calls[0].body.as_str()), ("+33612345678", "Your code is 482913"));

    // The same request id and body is a replay, as on the unitary endpoint: nothing new is sent.
    let replay = app.post(HIGH_THROUGHPUT, &body).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.body);
    assert_eq!(replay.body["executionId"], execution_id.as_str());
    assert_eq!(replay.headers["idempotent-replayed"], "true");

    app.get("/profiles/phone/+33612345678").await.assert_problem(StatusCode::NOT_FOUND, "profile-not-found");
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let profiles: i64 = client.query_one("SELECT count(*) FROM profiles", &[]).await.unwrap().get(0);
    assert_eq!(profiles, 0, "a high-throughput execution creates no profile");
    assert_eq!(provider.call_count(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn the_unitary_endpoint_still_takes_a_high_throughput_campaign() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&high_throughput_otp("fast")).await;
    let body = json!({"requestId": "u-1", "campaignId": id, "recipients": [
        {"type": "aep", "namespace": "phone", "userId": "+33612345678", "context": {"otp": "1"}}
    ]});
    let reply = app.post("/im/executions/unitary", &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
}

#[tokio::test]
async fn the_curl_sample_of_a_high_throughput_campaign_calls_its_endpoint_with_an_external_recipient() {
    let app = TestApp::spawn().await;
    let id = app.live_campaign(&high_throughput_otp("fast")).await;

    let reply = app.get(&format!("/campaigns/{id}/curl")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let command = reply.body["command"].as_str().unwrap();
    assert!(command.starts_with(&format!("curl -X POST '{}{HIGH_THROUGHPUT}'", app.address)), "{command}");
    let recipient = &reply.body["body"]["recipients"][0];
    assert_eq!(recipient["type"], "external", "{recipient}");
    assert!(recipient.get("namespace").is_none() && recipient.get("profile").is_none(), "{recipient}");
    assert_eq!(recipient["context"], json!({"otp": "<otp>"}));

    // The same campaign without the mark samples the unitary endpoint with its phone identity.
    let standard = app.live_campaign(&otp_sms("standard")).await;
    let reply = app.get(&format!("/campaigns/{standard}/curl")).await;
    let command = reply.body["command"].as_str().unwrap();
    assert!(command.starts_with(&format!("curl -X POST '{}/im/executions/unitary'", app.address)), "{command}");
    assert_eq!(reply.body["body"]["recipients"][0]["type"], "aep");
}
