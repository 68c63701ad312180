//! Audience executions through the real broker and an in-process worker: each member sent once,
//! idempotent requests, schedules that fire once (or never, once cancelled), and a stop that
//! halts the fan-out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Clock, Scope};
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::audiences::{create_list, sql, upload};

/// A list audience of `count` phone identities (`+336…`), uploaded as NDJSON.
async fn phone_list(app: &TestApp, name: &str, count: u32) -> String {
    let id = create_list(app, name).await;
    let lines: String = (0..count).map(|i| format!("{{\"userId\":\"+336{i:08}\"}}\n")).collect();
    let (status, body) = upload(app, &app.key, &id, "application/x-ndjson", lines).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

async fn wait_until(within: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(app: &TestApp, execution: &str) -> Value {
    let reply = app.get(&format!("/im/executions/audience/{execution}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body
}

fn body(request: &str, campaign: &str, audience: &str) -> Value {
    json!({"requestId": request, "campaignId": campaign, "audience": {"id": audience}, "context": {"otp": "123456"}})
}

/// Every queue of the app's topology (work shards, retry tiers, dead letters) ends empty.
async fn drained(app: &TestApp) {
    let broker = app.ingest.as_ref().unwrap().broker();
    wait_until(Duration::from_secs(20), "every queue to drain", async || {
        let mut held = 0;
        for queue in app.topology().topology.queues() {
            held += broker.queue_state(&queue).await.map_or(u32::MAX, |state| state.messages);
        }
        held == 0
    })
    .await;
}

async fn setup() -> (TestApp, TestWorker, Arc<ScriptedProvider>) {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    (app, worker, provider)
}

#[tokio::test]
async fn hostile_audience_requests_are_refused_before_anything_is_recorded() {
    let (app, _worker, provider) = setup().await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let audience = phone_list(&app, "ten", 10).await;
    for (request, status, kind) in [
        (
            json!({"requestId": "r", "campaignId": campaign, "audience": {"id": audience}}),
            StatusCode::BAD_REQUEST,
            "validation",
        ),
        (
            json!({"requestId": "r", "campaignId": campaign, "context": {"otp": "1"}}),
            StatusCode::BAD_REQUEST,
            "validation",
        ),
        (body("r", &campaign, "not-a-uuid"), StatusCode::NOT_FOUND, "audience-not-found"),
        (body("r", &campaign, &uuid::Uuid::now_v7().to_string()), StatusCode::NOT_FOUND, "audience-not-found"),
        (body("r", "nope", &audience), StatusCode::NOT_FOUND, "campaign-not-found"),
        (
            json!({"requestId": "r", "campaignId": campaign, "audience": {"id": audience}, "context": {"otp": "1"}, "sandbox": "b"}),
            StatusCode::BAD_REQUEST,
            "validation",
        ),
        (
            json!({"requestId": "r", "campaignId": campaign, "audience": {"id": audience}, "context": {"otp": "1"},
            "schedule": {"executeAt": "2999-01-01T00:00:00Z"}}),
            StatusCode::BAD_REQUEST,
            "validation",
        ),
    ] {
        app.post("/im/executions/audience", &request).await.assert_problem(status, kind);
    }
    // Another sandbox's audience is not there, for this sandbox's campaign.
    let stranger = app.key_for("b", &Scope::ALL).await;
    app.call(Method::POST, "/im/executions/audience", Some(&stranger), Some(&body("r", &campaign, &audience)))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");
    let client = sql(&app).await;
    let recorded: i64 = client.query_one("SELECT count(*) FROM audience_executions", &[]).await.unwrap().get(0);
    assert_eq!(recorded, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(provider.call_count(), 0);
}

#[tokio::test]
async fn an_audience_execution_sends_each_member_once_and_reports_the_audience_as_targeted() {
    let (app, _worker, provider) = setup().await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let audience = phone_list(&app, "many", 1_200).await;
    let reply = app.post("/im/executions/audience", &body("first", &campaign, &audience)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "InProgress");
    let execution = reply.body["executionId"].as_str().unwrap().to_string();
    // The same request again is the same execution; the same id with another body is refused.
    let again = app.post("/im/executions/audience", &body("first", &campaign, &audience)).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["executionId"], execution.as_str());
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    let mut other = body("first", &campaign, &audience);
    other["context"]["otp"] = json!("999999");
    app.post("/im/executions/audience", &other)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    // A request id names one request, whichever endpoint took it.
    let unitary = herald_tests::execution("first", &campaign, &[("+33612345678", json!({"otp": "1"}))]);
    app.post("/im/executions/unitary", &unitary)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    let unitary = herald_tests::execution("unitary-first", &campaign, &[("+33612345678", json!({"otp": "1"}))]);
    assert_eq!(app.post("/im/executions/unitary", &unitary).await.status, StatusCode::ACCEPTED);
    app.post("/im/executions/audience", &body("unitary-first", &campaign, &audience))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");

    wait_until(Duration::from_secs(60), "every member sent", async || {
        status(&app, &execution).await["progress"]["sent"] == 1_200
    })
    .await;
    wait_until(Duration::from_secs(10), "the unitary send too", async || provider.call_count() == 1_201).await;
    let done = status(&app, &execution).await;
    assert_eq!(done["status"], "Succeeded", "{done}");
    assert_eq!(done["targetedProfileCount"], 1_200);
    assert_eq!(done["progress"]["published"], 1_200);
    assert_eq!(done["audienceId"], audience.as_str());
    let calls: Vec<_> = provider.calls().into_iter().filter(|c| c.to != "+33612345678").collect();
    let numbers: HashSet<&str> = calls.iter().map(|c| c.to.as_str()).collect();
    assert_eq!((calls.len(), numbers.len()), (1_200, 1_200), "each member once");
    assert!(calls.iter().all(|c| c.body == "Your code is 123456"));
    // The broker holds nothing more of it.
    let held = app
        .ingest
        .as_ref()
        .unwrap()
        .broker()
        .queue_state(&app.topology().topology.queue_for(herald_core::Channel::Sms, "a"))
        .await;
    assert_eq!(held.map(|h| h.messages), Some(0));
    // The report counts the audience as targeted, and every send.
    wait_until(Duration::from_secs(10), "the report", async || {
        let report = app.get(&format!("/campaigns/{campaign}/report")).await;
        report.body["channels"][0]["targeted"] == 1_201 && report.body["channels"][0]["sent"] == 1_201
    })
    .await;
    // A running execution's audience cannot be deleted; a finished one's can.
    assert_eq!(app.delete(&format!("/audiences/{audience}")).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_schedule_fires_once_when_due_and_a_cancelled_one_never_fires() {
    let (app, _worker, provider) = setup().await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let audience = phone_list(&app, "five", 5).await;
    let at = app.clock.now() + chrono::Duration::seconds(60);
    let mut request = body("scheduled", &campaign, &audience);
    request["schedule"] = json!({"executeAt": at});
    let reply = app.post("/im/executions/audience", &request).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["scheduleStatus"], "Scheduled");
    let schedule = reply.body["scheduleId"].as_str().unwrap().to_string();
    assert!(reply.body.get("executionId").is_none(), "{}", reply.body);
    let mut cancelled = body("cancelled", &campaign, &audience);
    cancelled["schedule"] = json!({"executeAt": at});
    let cancelled =
        app.post("/im/executions/audience", &cancelled).await.body["scheduleId"].as_str().unwrap().to_string();
    assert_eq!(app.delete(&format!("/im/executions/schedules/{cancelled}")).await.body, json!({}));
    assert_eq!(app.delete(&format!("/im/executions/schedules/{cancelled}")).await.body, json!({}), "idempotent");
    let listed = app.get(&format!("/campaigns/{campaign}/schedules")).await;
    let statuses: Vec<&str> =
        listed.body["items"].as_array().unwrap().iter().map(|s| s["scheduleStatus"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["Cancelled", "Scheduled"]);
    // An audience with a schedule pending cannot be deleted.
    app.delete(&format!("/audiences/{audience}")).await.assert_problem(StatusCode::CONFLICT, "audience-in-use");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.call_count(), 0, "not before it is due");
    app.clock.advance(chrono::Duration::seconds(61));
    wait_until(Duration::from_secs(30), "the scheduled sends", async || provider.call_count() == 5).await;
    let fired = app.get(&format!("/im/executions/schedules/{schedule}")).await.body;
    assert_eq!(fired["scheduleStatus"], "Fired", "{fired}");
    let late = fired["lateMs"].as_i64().unwrap();
    assert!((0..=10_000).contains(&late), "{fired}");
    let execution = fired["executionId"].as_str().unwrap();
    wait_until(Duration::from_secs(10), "success", async || status(&app, execution).await["status"] == "Succeeded")
        .await;
    app.delete(&format!("/im/executions/schedules/{schedule}"))
        .await
        .assert_problem(StatusCode::CONFLICT, "schedule-already-fired");
    assert_eq!(app.get(&format!("/im/executions/schedules/{cancelled}")).await.body["scheduleStatus"], "Cancelled");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.call_count(), 5, "the cancelled schedule sent nothing");
    let stranger = app.key_for("b", &Scope::ALL).await;
    app.call(Method::GET, &format!("/im/executions/schedules/{schedule}"), Some(&stranger), None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "schedule-not-found");
    drained(&app).await;
}

#[tokio::test]
async fn stopping_the_campaign_halts_the_fan_out_and_excludes_the_rest() {
    let (app, _worker, provider) = setup().await;
    let mut document = otp_sms("otp");
    document["throttleRatePerSec"] = json!(100);
    let campaign = app.live_campaign(&document).await;
    let audience = phone_list(&app, "slow", 600).await;
    let reply = app.post("/im/executions/audience", &body("slow", &campaign, &audience)).await;
    let execution = reply.body["executionId"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(30), "some sends", async || provider.call_count() >= 100).await;
    let stopped_at = Instant::now();
    assert_eq!(app.post(&format!("/campaigns/{campaign}/stop"), &Value::Null).await.status, StatusCode::OK);
    wait_until(Duration::from_secs(20), "the fan-out to end", async || {
        status(&app, &execution).await["status"] == "Failed"
    })
    .await;
    wait_until(Duration::from_secs(20), "every member accounted for", async || {
        let progress = &status(&app, &execution).await["progress"];
        progress["sent"].as_i64().unwrap() + progress["excluded"].as_i64().unwrap() == 600
    })
    .await;
    let late: Vec<Duration> = provider
        .calls()
        .iter()
        .filter_map(|c| c.at.checked_duration_since(stopped_at))
        .filter(|d| *d > Duration::from_secs(1))
        .collect();
    assert!(late.is_empty(), "provider calls started more than 1 s after the stop: {late:?}");
    let done = status(&app, &execution).await;
    assert_eq!(done["failureReason"], "campaign-not-live");
    assert_eq!(done["progress"]["sent"].as_u64(), Some(provider.call_count()));
    assert!(done["progress"]["unreached"].as_i64().unwrap() > 0, "{done}");
    // What was not published was recorded excluded, each member once.
    assert_eq!(
        done["progress"]["unreached"].as_i64().unwrap() + done["progress"]["published"].as_i64().unwrap(),
        600,
        "{done}"
    );
    let report = app.get(&format!("/campaigns/{campaign}/report")).await;
    wait_until(Duration::from_secs(10), "the report", async || {
        let report = app.get(&format!("/campaigns/{campaign}/report")).await;
        report.body["channels"][0]["excluded"]["byReason"]["campaign-not-live"].as_i64()
            == done["progress"]["excluded"].as_i64()
    })
    .await;
    drop(report);
    drained(&app).await;
}

#[tokio::test]
async fn members_not_reached_within_the_window_are_excluded_and_counted() {
    let (app, _worker, provider) = setup().await;
    let mut document = otp_sms("otp");
    document["throttleRatePerSec"] = json!(50);
    let campaign = app.live_campaign(&document).await;
    let audience = phone_list(&app, "window", 300).await;
    let reply = app.post("/im/executions/audience", &body("window", &campaign, &audience)).await;
    let execution = reply.body["executionId"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(30), "some sends", async || provider.call_count() >= 20).await;
    // Twelve hours and a second later (the default window), by the app's clock.
    app.clock.advance(chrono::Duration::seconds(12 * 3600 + 1));
    wait_until(Duration::from_secs(20), "the fan-out to end", async || {
        status(&app, &execution).await["status"] == "Failed"
    })
    .await;
    wait_until(Duration::from_secs(30), "every member accounted for", async || {
        let progress = &status(&app, &execution).await["progress"];
        progress["sent"].as_i64().unwrap() + progress["excluded"].as_i64().unwrap() == 300
    })
    .await;
    let done = status(&app, &execution).await;
    assert_eq!(done["failureReason"], "execution-window-passed", "{done}");
    assert!(done["progress"]["unreached"].as_i64().unwrap() > 0, "{done}");
    assert_eq!(
        done["progress"]["unreached"].as_i64().unwrap() + done["progress"]["published"].as_i64().unwrap(),
        300,
        "{done}"
    );
    let client = sql(&app).await;
    let reasons: Vec<(String, i64)> = client
        .query("SELECT reason, count(*) FROM deliveries WHERE status = 'excluded' GROUP BY reason ORDER BY reason", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // Unpublished members are past the window; published ones still queued have expired.
    assert!(
        reasons.iter().all(|(reason, _)| reason == "execution-window-passed" || reason == "expired"),
        "{reasons:?}"
    );
    assert_eq!(done["progress"]["sent"].as_u64(), Some(provider.call_count()));
    drained(&app).await;
}

#[tokio::test]
async fn the_daily_quota_caps_a_fan_out_exactly() {
    let mut options = TestOptions::with_broker();
    options.limits.daily_sms = 30;
    let app = TestApp::spawn_with(options).await;
    let provider = Arc::new(ScriptedProvider::new());
    let _worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let audience = phone_list(&app, "quota", 100).await;
    let reply = app.post("/im/executions/audience", &body("quota", &campaign, &audience)).await;
    let execution = reply.body["executionId"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(30), "the fan-out to end", async || {
        status(&app, &execution).await["status"] == "Failed"
    })
    .await;
    wait_until(Duration::from_secs(30), "the sends", async || status(&app, &execution).await["progress"]["sent"] == 30)
        .await;
    let done = status(&app, &execution).await;
    assert_eq!(done["failureReason"], "quota-exceeded", "{done}");
    assert_eq!((done["progress"]["published"].as_i64(), done["progress"]["excluded"].as_i64()), (Some(30), Some(70)));
    assert_eq!(done["progress"]["unreached"], 70);
    drained(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(provider.call_count(), 30);
    // A unitary execution is refused too: the day's quota is used up.
    let unitary = herald_tests::execution("after", &campaign, &[("+33612345678", json!({"otp": "1"}))]);
    app.post("/im/executions/unitary", &unitary).await.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded");
}
