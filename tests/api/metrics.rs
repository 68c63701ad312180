//! `/metrics` after known traffic: the counters and histogram counts match what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::delivery::{ErrorClass, ProviderError};
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::StatusCode;
use serde_json::json;

/// The value of the sample `name{labels}` in a Prometheus text exposition (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap_or_else(|_| panic!("bad value in {series} {value}")))
}

#[tokio::test]
async fn metrics_count_requests_outcomes_retries_and_latencies() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let provider = Arc::new(ScriptedProvider::new());
    // One throttled call (retried in process) and one permanent refusal; everything else is sent.
    provider.script([
        Err(ProviderError::new(ErrorClass::Transient, "Throttling", "slow down")),
        Err(ProviderError::new(ErrorClass::Permanent, "InvalidParameter", "bad number")),
    ]);
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    for (i, phone) in ["+33612345601", "+33612345602", "+33612345603"].iter().enumerate() {
        let body = execution(&format!("m{i}"), &campaign, &[(phone, json!({"otp": "1"}))]);
        assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
    }
    // A refused request and an unknown route.
    let refused = app.post("/im/executions/unitary", &json!({"requestId": "bad"})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    let scrape = || async {
        let reply = app.http.get(format!("{}/metrics", app.address)).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "/metrics needs no API key");
        reply.text().await.unwrap()
    };
    let started = Instant::now();
    let text = loop {
        let text = scrape().await;
        let done = sample(&text, r#"herald_delivery_outcomes_total{channel="sms",status="sent",reason=""}"#) >= 2.0
            && sample(
                &text,
                r#"herald_delivery_outcomes_total{channel="sms",status="failed",reason="InvalidParameter"}"#,
            ) >= 1.0;
        if done {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "outcomes not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    worker.stop().await;

    let route = r#"route="/im/executions/unitary",method="POST""#;
    assert_eq!(sample(&text, &format!("herald_http_requests_total{{{route},status=\"202\"}}")), 3.0, "{text}");
    assert_eq!(sample(&text, &format!("herald_http_requests_total{{{route},status=\"400\"}}")), 1.0, "{text}");
    assert_eq!(sample(&text, &format!("herald_http_request_duration_seconds_count{{{route}}}")), 4.0, "{text}");
    assert_eq!(sample(&text, "herald_publish_confirm_duration_seconds_count"), 3.0, "{text}");
    assert_eq!(sample(&text, r#"herald_messages_consumed_total{channel="sms"}"#), 3.0, "{text}");
    assert_eq!(sample(&text, r#"herald_delivery_outcomes_total{channel="sms",status="sent",reason=""}"#), 2.0);
    assert_eq!(
        sample(&text, r#"herald_delivery_outcomes_total{channel="sms",status="failed",reason="InvalidParameter"}"#),
        1.0
    );
    assert_eq!(sample(&text, r#"herald_retries_total{channel="sms",tier="in-process"}"#), 1.0, "{text}");
    assert_eq!(sample(&text, r#"herald_provider_call_duration_seconds_count{channel="sms",result="ok"}"#), 2.0);
    assert_eq!(sample(&text, r#"herald_provider_call_duration_seconds_count{channel="sms",result="error"}"#), 2.0);
    assert_eq!(sample(&text, r#"herald_accept_to_sent_seconds_count{channel="sms"}"#), 2.0, "{text}");
    assert_eq!(provider.call_count(), 4);
    let ingest_lookups = sample(&text, r#"herald_campaign_cache_lookups_total{component="ingest",result="hit"}"#)
        + sample(&text, r#"herald_campaign_cache_lookups_total{component="ingest",result="miss"}"#);
    assert_eq!(ingest_lookups, 3.0, "one lookup per accepted execution: {text}");
    let worker_lookups = sample(&text, r#"herald_campaign_cache_lookups_total{component="worker",result="hit"}"#)
        + sample(&text, r#"herald_campaign_cache_lookups_total{component="worker",result="miss"}"#);
    assert_eq!(worker_lookups, 3.0, "one lookup per consumed message: {text}");
    assert_eq!(sample(&text, r#"herald_dead_letters_total{channel="sms",reason="max-attempts"}"#), 0.0);
}

#[tokio::test]
async fn metrics_count_tier_retries_dead_letters_and_channel_pauses() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let scrape =
        || async { app.http.get(format!("{}/metrics", app.address)).send().await.unwrap().text().await.unwrap() };
    let wait_for = |series: &'static str, value: f64| {
        let scrape = &scrape;
        async move {
            let started = Instant::now();
            loop {
                let text = scrape().await;
                if sample(&text, series) >= value {
                    return text;
                }
                assert!(started.elapsed() < Duration::from_secs(30), "{series} never reached {value}:\n{text}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    // Six transient failures: two calls per claim (one retried in process), tiers 1 and 2, then
    // the dead-letter queue (fast_policy: 6 attempts).
    // The provider's message quotes the recipient, as SES and SNS messages sometimes do.
    let throttled =
        || Err(ProviderError::new(ErrorClass::Transient, "Throttling", "slow down sending to +33612345611"));
    provider.script((0..6).map(|_| throttled()));
    let body = execution("doomed", &campaign, &[("+33612345611", json!({"otp": "1"}))]);
    assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
    let text = wait_for(r#"herald_dead_letters_total{channel="sms",reason="max-attempts"}"#, 1.0).await;
    assert_eq!(sample(&text, r#"herald_retries_total{channel="sms",tier="in-process"}"#), 3.0, "{text}");
    assert_eq!(sample(&text, r#"herald_retries_total{channel="sms",tier="1"}"#), 1.0, "{text}");
    assert_eq!(sample(&text, r#"herald_retries_total{channel="sms",tier="2"}"#), 1.0, "{text}");
    assert_eq!(
        sample(&text, r#"herald_delivery_outcomes_total{channel="sms",status="retrying",reason="Throttling"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, r#"herald_delivery_outcomes_total{channel="sms",status="failed",reason="max-attempts"}"#),
        1.0
    );
    assert_eq!(sample(&text, r#"herald_provider_call_duration_seconds_count{channel="sms",result="error"}"#), 6.0);
    // The dead letter's last error is kept for operators, without the recipient's number.
    let letters = app.get("/dead-letters").await.body;
    let last_error = letters["items"][0]["lastError"].as_str().unwrap_or_else(|| panic!("{letters}"));
    assert!(last_error.contains("slow down sending to [redacted]"), "{last_error}");

    // An account-wide failure pauses the channel, then the message is sent and the pause ends.
    provider.script([Err(ProviderError::new(ErrorClass::AccountWide, "AccountSendingPausedException", "paused"))]);
    let body = execution("paused", &campaign, &[("+33612345612", json!({"otp": "2"}))]);
    assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
    let text =
        wait_for(r#"herald_channel_pauses_total{channel="sms",reason="AccountSendingPausedException"}"#, 1.0).await;
    assert_eq!(sample(&text, r#"herald_channel_paused{channel="sms"}"#), 1.0, "paused now: {text}");
    let text = wait_for(r#"herald_delivery_outcomes_total{channel="sms",status="sent",reason=""}"#, 1.0).await;
    worker.stop().await;
    assert_eq!(sample(&text, r#"herald_channel_paused{channel="sms"}"#), 0.0, "the pause is over: {text}");
    assert_eq!(sample(&text, r#"herald_accept_to_sent_seconds_count{channel="sms"}"#), 1.0);
    // Each tier and each paused hand-back is another delivery from the broker: at least 3 + 2.
    let consumed = sample(&text, r#"herald_messages_consumed_total{channel="sms"}"#);
    assert!(consumed >= 5.0, "{consumed} deliveries counted: {text}");
}
