use chrono::{Duration, SecondsFormat};
use herald_tests::TestApp;
use herald_tests::fixtures::password_reset_email;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_scheduled_campaign_goes_live_at_its_start_date_and_completes_at_its_end_date() {
    let app = TestApp::spawn().await;
    let now = herald_core::Clock::now(app.clock.as_ref());
    let mut document = password_reset_email("windowed");
    document["schedule"] = serde_json::json!({
        "startDate": (now + Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "endDate": (now + Duration::hours(2)).to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    let id = app.create_campaign(&document).await;
    let activated = app.post(&format!("/campaigns/{id}/activate"), &Value::Null).await;
    assert_eq!(activated.body["status"], "scheduled", "{}", activated.body);
    assert_eq!(app.get("/campaigns?status=scheduled").await.body["items"].as_array().unwrap().len(), 1);

    app.clock.advance(Duration::minutes(59));
    assert_eq!(app.get(&format!("/campaigns/{id}")).await.body["status"], "scheduled");
    app.clock.advance(Duration::minutes(1));
    assert_eq!(app.get(&format!("/campaigns/{id}")).await.body["status"], "live");
    assert_eq!(app.get("/campaigns?status=live").await.body["items"][0]["id"], id.as_str());

    app.clock.advance(Duration::hours(1));
    assert_eq!(app.get(&format!("/campaigns/{id}")).await.body["status"], "completed");
    assert_eq!(app.get("/campaigns?status=completed").await.body["items"][0]["id"], id.as_str());
    assert_eq!(app.get("/campaigns?status=live").await.body["items"].as_array().unwrap().len(), 0);

    // Completed is final like stopped: no edits, no reactivation, but it can be archived.
    let reply = app.post(&format!("/campaigns/{id}/stop"), &Value::Null).await;
    reply.assert_problem(StatusCode::CONFLICT, "illegal-transition");
    assert_eq!(reply.body["campaignStatus"], "completed");
    app.patch(&format!("/campaigns/{id}"), &serde_json::json!({"description": "x"}))
        .await
        .assert_problem(StatusCode::CONFLICT, "illegal-transition");
    assert_eq!(app.post(&format!("/campaigns/{id}/archive"), &Value::Null).await.body["status"], "archived");
}
