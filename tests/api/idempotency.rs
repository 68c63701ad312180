//! requestId as an idempotency key, confirms before 202, and cross-instance freshness.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herald_core::Channel;
use herald_core::execution::canonical_json;
use herald_store::ExecutionClaim;
use herald_tests::fixtures::otp_sms;
use herald_tests::{TestApp, TestOptions, execution};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn otp_body(request_id: &str, campaign: &str) -> Value {
    execution(
        request_id,
        campaign,
        &[("+33612345678", json!({"otp": "111111"})), ("+33612345679", json!({"otp": "222222"}))],
    )
}

#[tokio::test]
async fn a_replay_with_the_same_body_returns_the_original_202_and_publishes_nothing() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    let first = app.post("/im/executions/unitary", &otp_body("same", &id)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    // The same document with its keys in another order is the same body.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"recipients": [{{"context": {{"otp": "111111"}}, "userId": "+33612345678", "type": "external"}},
                            {{"userId": "+33612345679", "type": "external", "context": {{"otp": "222222"}}}}],
            "campaignId": "{id}", "requestId": "same"}}"#
    ))
    .unwrap();
    let replay = app.post("/im/executions/unitary", &reordered).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED);
    assert_eq!(replay.body, first.body, "the original executionId and createdAt");
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(app.topology().drain(&app.topology().queue(Channel::Sms)).await.len(), 2);
}

#[tokio::test]
async fn the_same_request_id_with_another_body_is_422_and_scoped_per_campaign() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    app.post("/im/executions/unitary", &otp_body("k", &id)).await;
    let changed = execution("k", &id, &[("+33612345678", json!({"otp": "999999"}))]);
    let reply = app.post("/im/executions/unitary", &changed).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    assert_eq!(reply.body["report"]["additionalContext"]["requestId"], "k");

    let other = app.live_campaign(&otp_sms("other")).await;
    assert_eq!(
        app.post("/im/executions/unitary", &otp_body("k", &other)).await.status,
        StatusCode::ACCEPTED,
        "keys are per campaign"
    );
}

#[tokio::test]
async fn a_request_id_still_being_accepted_is_409_in_progress() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    let body = otp_body("busy", &id);
    let now = herald_core::Clock::now(app.clock.as_ref());
    // Another instance holds the key: claimed, lease running, not yet confirmed.
    let claim = ExecutionClaim {
        sandbox: "a".into(),
        campaign_id: id.parse().unwrap(),
        request_id: "busy".into(),
        body_hash: Sha256::digest(canonical_json(&body)).to_vec(),
        execution_id: uuid::Uuid::now_v7(),
        recipients: json!([]),
        now,
        lease_until: now + chrono::Duration::seconds(30),
    };
    app.store.claim_executions(&[claim]).await.unwrap();
    let reply = app.post("/im/executions/unitary", &body).await;
    reply.assert_problem(StatusCode::CONFLICT, "request-in-progress");
    // Retry-After tells the client when the lease ends, i.e. when a retry can take over.
    assert_eq!(reply.headers["retry-after"], "30");

    // Once the lease has run out (the other instance died), a retry takes over.
    app.clock.advance(chrono::Duration::seconds(31));
    assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn fifty_concurrent_identical_requests_make_one_execution_with_one_message_per_recipient() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    let body = otp_body("storm", &id);
    let calls = (0..50).map(|_| app.post("/im/executions/unitary", &body));
    let replies = futures_util::future::join_all(calls).await;
    let mut execution_ids = HashSet::new();
    for reply in &replies {
        match reply.status {
            StatusCode::ACCEPTED => {
                execution_ids.insert(reply.body["executionId"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => {
                reply.assert_problem(StatusCode::CONFLICT, "request-in-progress");
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    // Those told "in progress" retry, as a client would, and get the same execution.
    for reply in replies.iter().filter(|r| r.status == StatusCode::CONFLICT) {
        let _ = reply;
        let retried = app.post("/im/executions/unitary", &body).await;
        assert_eq!(retried.status, StatusCode::ACCEPTED);
        execution_ids.insert(retried.body["executionId"].as_str().unwrap().to_string());
    }
    assert_eq!(execution_ids.len(), 1, "{execution_ids:?}");
    let messages = app.topology().drain(&app.topology().queue(Channel::Sms)).await;
    assert_eq!(messages.len(), 2, "one message per recipient");

    let changed = execution("storm", &id, &[("+33612345678", json!({"otp": "000000"}))]);
    app.post("/im/executions/unitary", &changed)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
}

#[tokio::test]
async fn a_refused_publish_is_503_and_its_retry_completes_without_duplicates() {
    let app = TestApp::spawn_with(TestOptions { max_queue_length: Some(1), ..TestOptions::with_broker() }).await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    let queue = app.topology().queue(Channel::Sms);
    // Fill the queue until the broker refuses (quorum queues may overshoot their limit by a
    // message or two, so fill by observation rather than by arithmetic).
    let mut filled = 0;
    for attempt in 0..10 {
        let fill = execution(&format!("fill-{attempt}"), &id, &[("+33612345670", json!({"otp": "1"}))]);
        if app.post("/im/executions/unitary", &fill).await.status != StatusCode::ACCEPTED {
            break;
        }
        filled += 1;
    }
    assert!((1..10).contains(&filled), "the queue never filled up ({filled})");

    // The queue is full (reject-publish): the broker nacks, so the call must not be answered 202.
    let second = otp_body("overflow", &id);
    let refused = app.post("/im/executions/unitary", &second).await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    let held = app.topology().drain(&queue).await;
    assert_eq!(held.len(), filled, "nothing of the refused call is on the queue");
    assert!(held.iter().all(|m| m.body["requestId"].as_str().unwrap().starts_with("fill-")));

    // Room again: the client's retry completes the same execution. One slot at a time, so drain
    // between attempts as a consumer would.
    let mut execution_id = None;
    let mut published = Vec::new();
    for _ in 0..5 {
        let retry = app.post("/im/executions/unitary", &second).await;
        published.extend(app.topology().drain(&queue).await);
        if retry.status == StatusCode::ACCEPTED {
            execution_id = Some(retry.body["executionId"].as_str().unwrap().to_string());
            break;
        }
    }
    let execution_id = execution_id.expect("the retry is accepted once the queue has room");
    let ids: HashSet<String> = published.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!(ids, HashSet::from([format!("{execution_id}/0"), format!("{execution_id}/1")]));
}

#[tokio::test]
async fn a_stop_through_one_instance_rejects_executions_at_another_within_a_second() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let peer = app.spawn_peer().await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    // The peer caches the live campaign.
    assert_eq!(peer.post("/im/executions/unitary", &otp_body("before", &id)).await.status, StatusCode::ACCEPTED);
    assert_eq!(peer.post("/im/executions/unitary", &otp_body("before-2", &id)).await.status, StatusCode::ACCEPTED);

    assert_eq!(app.post(&format!("/campaigns/{id}/stop"), &Value::Null).await.status, StatusCode::OK);
    let stopped_at = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reply = peer.post("/im/executions/unitary", &otp_body(&format!("after-{attempt}"), &id)).await;
        if reply.status == StatusCode::CONFLICT {
            assert_eq!(reply.body["campaignStatus"], "stopped");
            break;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(1),
            "the peer still accepts after {:?}",
            stopped_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped_at.elapsed() < Duration::from_secs(1));
}
