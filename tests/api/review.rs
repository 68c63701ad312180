//! Each review problem blocks activation on its own, and all of them are reported at once.

use chrono::{Duration, SecondsFormat};
use herald_tests::fixtures::{otp_sms, password_reset_email};
use herald_tests::{Reply, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Creates the campaign, tries to activate it, asserts the 422, that it is still a draft, and
/// returns the problem codes.
async fn blocked(app: &TestApp, document: &Value) -> (Vec<String>, Reply) {
    let id = app.create_campaign(document).await;
    let reply = app.post(&format!("/campaigns/{id}/activate"), &Value::Null).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "review-failed");
    assert_eq!(reply.body["report"]["additionalContext"]["campaignId"], id.as_str());
    assert_eq!(app.get(&format!("/campaigns/{id}")).await.body["status"], "draft", "a failed review changes nothing");
    let codes =
        reply.body["problems"].as_array().unwrap().iter().map(|p| p["code"].as_str().unwrap().to_string()).collect();
    (codes, reply)
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
async fn a_template_that_does_not_compile_blocks_activation_with_its_part_and_line() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("c");
    document["content"]["html"] = json!("<p>ok</p>\n<p>{{ context.resetUrl </p>");
    let (codes, reply) = blocked(&app, &document).await;
    assert_eq!(codes, ["template-syntax"]);
    assert_eq!(reply.body["problems"][0]["pointer"], "/content/html");
    assert_eq!(reply.body["problems"][0]["line"], 2);
}

#[tokio::test]
async fn missing_content_blocks_activation() {
    let app = TestApp::spawn().await;
    let mut document = otp_sms("c");
    document["content"] = json!({});
    assert_eq!(blocked(&app, &document).await.0, ["missing-content"]);
}

#[tokio::test]
async fn a_missing_sender_blocks_activation() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("c");
    document["surface"] = json!({});
    assert_eq!(blocked(&app, &document).await.0, ["missing-sender"]);
}

#[tokio::test]
async fn a_malformed_sender_address_blocks_activation() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("c");
    document["surface"]["fromAddress"] = json!("no-reply at example.com");
    let (codes, reply) = blocked(&app, &document).await;
    assert_eq!(codes, ["malformed-sender"]);
    assert_eq!(reply.body["problems"][0]["pointer"], "/surface/fromAddress");
}

#[tokio::test]
async fn an_end_date_not_after_the_start_date_blocks_activation() {
    let app = TestApp::spawn().await;
    let now = herald_core::Clock::now(app.clock.as_ref());
    let mut document = password_reset_email("c");
    document["schedule"] =
        json!({"startDate": rfc3339(now + Duration::days(2)), "endDate": rfc3339(now + Duration::days(1))});
    assert_eq!(blocked(&app, &document).await.0, ["schedule-end-not-after-start"]);
}

#[tokio::test]
async fn an_end_date_already_past_blocks_activation() {
    let app = TestApp::spawn().await;
    let now = herald_core::Clock::now(app.clock.as_ref());
    let mut document = password_reset_email("c");
    document["schedule"] = json!({"endDate": rfc3339(now - Duration::minutes(1))});
    assert_eq!(blocked(&app, &document).await.0, ["schedule-end-in-past"]);
}

#[tokio::test]
async fn use_of_context_system_blocks_activation() {
    let app = TestApp::spawn().await;
    let mut document = otp_sms("c");
    document["content"]["body"] = json!("{{ context.otp }} {{ context.system.tenant }}");
    assert_eq!(blocked(&app, &document).await.0, ["context-system"]);
}

#[tokio::test]
async fn a_top_level_variable_other_than_profile_and_context_blocks_activation() {
    let app = TestApp::spawn().await;
    let mut document = otp_sms("c");
    document["content"]["body"] = json!("Hi {{ user.firstName }}, {{ context.otp }}");
    let (codes, reply) = blocked(&app, &document).await;
    assert_eq!(codes, ["unknown-variable"]);
    assert!(reply.body["problems"][0]["detail"].as_str().unwrap().contains("`user`"));
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let app = TestApp::spawn().await;
    let now = herald_core::Clock::now(app.clock.as_ref());
    let document = json!({
        "name": "everything wrong",
        "channel": "email",
        "surface": {"fromAddress": "nope", "replyTo": "also nope"},
        "schedule": {"startDate": rfc3339(now - Duration::days(1)), "endDate": rfc3339(now - Duration::days(2))},
        "content": {
            "html": "{{ user.name }} {{ context.system.x }} {{ get_env(name='HOME') }}",
            "body": "not for email"
        }
    });
    let (codes, _) = blocked(&app, &document).await;
    assert_eq!(
        codes,
        [
            "missing-identity-namespace",
            "missing-content",
            "content-not-for-channel",
            "malformed-sender",
            "malformed-sender",
            "schedule-end-not-after-start",
            "schedule-end-in-past",
            "unknown-variable",
            "context-system",
            "forbidden-function",
        ]
    );
}
