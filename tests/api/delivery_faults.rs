//! Faults in the delivery path, in-process against the real PostgreSQL and RabbitMQ: what the
//! broker holds after a retry, a topology left by an older release, copies of one delivery in a
//! claim batch, claim batches racing in opposite key orders, and calls that may have delivered.
//! The fault suite (`tests/faults`) runs the same kinds of faults against real processes.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Channel;
use herald_core::delivery::{DeliveryStatus, ErrorClass, ProviderError};
use herald_store::{ClaimRequest, DeliveryClaim, DeliveryKey, Finish};
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions};

use crate::worker::{recipient as status_of, transient, wait_for_status as wait_for};
use herald_worker::providers::fake::ScriptedProvider;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;
use uuid::Uuid;

async fn execute(app: &TestApp, campaign: &str, request_id: &str) -> String {
    crate::worker::execute(app, campaign, request_id, json!(request_id)).await
}

/// Long tiers, so the retried message is still in its tier queue when the test looks.
fn slow_tiers() -> Vec<Duration> {
    vec![Duration::from_secs(60), Duration::from_secs(120), Duration::from_secs(240)]
}

#[tokio::test]
async fn a_retried_message_is_in_exactly_one_tier_queue() {
    let app = TestApp::spawn_with(TestOptions { retry_tiers: slow_tiers(), ..TestOptions::with_broker() }).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let provider = Arc::new(ScriptedProvider::new());
    // Both in-process calls fail: the message goes to the first tier.
    provider.script([transient(), transient()]);
    let policy = herald_core::delivery::RetryPolicy { tiers: slow_tiers(), ..fast_policy() };
    let worker = TestWorker::start(&app, provider.clone(), policy).await;
    let execution_id = execute(&app, &campaign, "retried").await;
    // A retrying delivery shows as queued, with its last failure as the reason.
    let started = std::time::Instant::now();
    while status_of(&app, &execution_id).await["attempts"] != 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "never retried: {}", status_of(&app, &execution_id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;

    let topology = &app.topology().topology;
    let mut held = Vec::new();
    for tier in slow_tiers() {
        held.push(app.topology().count(&topology.retry_queue(tier)).await);
    }
    assert_eq!(held, vec![1, 0, 0], "one copy, in the first tier only (60 s, 120 s, 240 s)");
    assert_eq!(app.topology().count(&app.topology().queue(Channel::Sms)).await, 0);
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.to_string()))
}

#[tokio::test]
async fn a_topology_left_with_the_legacy_tier_binding_is_migrated_when_declared() {
    let app = TestApp::spawn_with(TestOptions { retry_tiers: slow_tiers(), ..TestOptions::with_broker() }).await;
    let topology = app.topology().topology.clone();
    let connection = herald_tests::broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    // What releases before the fix bound: a header starting with `x-`, which matches everything.
    for tier in &topology.retry_tiers {
        let mut legacy = FieldTable::default();
        legacy.insert("x-match".into(), text("all"));
        legacy.insert("x-herald-retry-tier".into(), text(&format!("{}s", tier.as_secs())));
        channel
            .queue_bind(
                topology.retry_queue(*tier).into(),
                topology.retry_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                legacy,
            )
            .await
            .unwrap();
    }
    topology.declare(&channel).await.expect("declaring over the old bindings");

    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(herald_broker::headers::RETRY_TIER.into(), text("120s"));
    let properties = lapin::BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    let confirm = channel
        .basic_publish(
            topology.retry_exchange().into(),
            "sms".into(),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            b"{}",
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let mut held = Vec::new();
    for tier in slow_tiers() {
        held.push(app.topology().count(&topology.retry_queue(tier)).await);
    }
    assert_eq!(held, vec![0, 1, 0], "only the 120 s tier holds the message");
    let _ = connection.close(200, "done".into()).await;
}

/// A delivery row of a fresh execution, for store-level tests.
async fn accepted_execution(app: &TestApp, campaign: &str, request_id: &str) -> DeliveryKey {
    let execution_id = execute(app, campaign, request_id).await;
    DeliveryKey {
        execution_id: execution_id.parse().unwrap(),
        recipient_index: 0,
        campaign_id: campaign.parse().unwrap(),
        channel: herald_core::Channel::Sms,
    }
}

fn claim_request(key: &DeliveryKey) -> ClaimRequest {
    let now = chrono::Utc::now();
    ClaimRequest {
        key: key.clone(),
        version_id: None,
        token: Uuid::now_v7(),
        now,
        accepted_at: now,
        resend_abandoned: false,
        suppression: None,
    }
}

#[tokio::test]
async fn copies_of_a_decided_delivery_in_one_claim_batch_are_all_final() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let key = accepted_execution(&app, &campaign, "copies").await;
    let first = claim_request(&key);
    let stale = chrono::Duration::seconds(60);
    let token = match app.store.claim_deliveries(&[first], stale).await.unwrap().remove(0) {
        DeliveryClaim::Claimed { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let sent = Finish {
        key: key.clone(),
        token,
        status: DeliveryStatus::Sent,
        reason: None,
        provider_message_id: Some("m-1".into()),
        calls: 1,
        last_error: None,
        retry_after: None,
        now: chrono::Utc::now(),
    };
    assert_eq!(app.store.finish_deliveries(&[sent]).await.unwrap(), vec![true]);

    // Three copies of the message arrive in one batch (a republish race, a redelivery).
    let copies = [claim_request(&key), claim_request(&key), claim_request(&key)];
    let outcomes = app.store.claim_deliveries(&copies, stale).await.unwrap();
    assert_eq!(outcomes, vec![DeliveryClaim::Final(DeliveryStatus::Sent); 3], "acknowledged, never retried");
}

#[tokio::test]
async fn claim_and_outcome_batches_racing_in_opposite_orders_never_fail() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let execution_id = accepted_execution(&app, &campaign, "wide").await.execution_id;
    let key = |i: i32| DeliveryKey {
        execution_id,
        recipient_index: i,
        campaign_id: campaign.parse().unwrap(),
        channel: herald_core::Channel::Sms,
    };
    let stale = chrono::Duration::seconds(60);
    // Four "workers" claim the same 200 new deliveries each round, in four different orders (as
    // redelivered copies arrive), then write a retrying outcome for what they got. Rows locked in
    // request order deadlock here within a few rounds.
    let mut tasks = Vec::new();
    for order in 0..4 {
        let store = app.store.clone();
        let rounds: Vec<Vec<DeliveryKey>> = (0..15)
            .map(|round| {
                let mut keys: Vec<DeliveryKey> = (0..200).map(|i| key(round * 200 + i)).collect();
                match order {
                    1 => keys.reverse(),
                    2 => keys.sort_by_key(|k| (k.recipient_index % 7, k.recipient_index)),
                    3 => keys.sort_by_key(|k| (k.recipient_index % 3, -k.recipient_index)),
                    _ => {}
                }
                keys
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for keys in rounds {
                let requests: Vec<ClaimRequest> = keys.iter().map(claim_request).collect();
                let outcomes = store.claim_deliveries(&requests, stale).await.expect("a claim batch never fails");
                let finishes: Vec<Finish> = requests
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, outcome)| matches!(outcome, DeliveryClaim::Claimed { .. }))
                    .map(|(request, _)| Finish {
                        key: request.key.clone(),
                        token: request.token,
                        status: DeliveryStatus::Retrying,
                        reason: Some("Throttling".into()),
                        provider_message_id: None,
                        calls: 0,
                        last_error: None,
                        retry_after: Some(Duration::ZERO),
                        now: chrono::Utc::now(),
                    })
                    .collect();
                store.finish_deliveries(&finishes).await.expect("an outcome batch never fails");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_call_that_may_have_delivered_is_recorded_unknown_and_never_resent() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let provider = Arc::new(ScriptedProvider::new());
    provider.script([Err(ProviderError::new(ErrorClass::MaybeDelivered, "Timeout", "no answer in time"))]);
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "timed-out").await;
    let recipient = wait_for(&app, &execution_id, "unknown").await;
    assert_eq!(recipient["reason"], "Timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.call_count(), 1, "one call: a timed-out OTP is not sent again");
    worker.stop().await;
}

#[tokio::test]
async fn a_campaign_that_resends_maybe_sent_messages_calls_again_after_a_timeout() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let mut document = otp_sms("resending");
    document["resendMaybeSent"] = json!(true);
    let campaign = app.live_campaign(&document).await;
    let provider = Arc::new(ScriptedProvider::new());
    provider.script([Err(ProviderError::new(ErrorClass::MaybeDelivered, "Timeout", "no answer in time"))]);
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "resent").await;
    assert_eq!(wait_for(&app, &execution_id, "sent").await["attempts"], 2);
    assert_eq!(provider.call_count(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn an_outcome_whose_provider_texts_hold_a_nul_byte_is_still_written() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let key = accepted_execution(&app, &campaign, "nul").await;
    let request = claim_request(&key);
    let token = request.token;
    let claimed = app.store.claim_deliveries(&[request], chrono::Duration::seconds(60)).await.unwrap();
    assert!(matches!(claimed[0], DeliveryClaim::Claimed { .. }), "{claimed:?}");
    // A provider (or a man in the middle) answers with a NUL in its message id and error text.
    let finish = Finish {
        key,
        token,
        status: DeliveryStatus::Sent,
        reason: Some("ok\0".into()),
        provider_message_id: Some("m-\0-1".into()),
        calls: 1,
        last_error: Some("\0".into()),
        retry_after: None,
        now: chrono::Utc::now(),
    };
    assert_eq!(app.store.finish_deliveries(&[finish]).await.unwrap(), vec![true]);
}

#[tokio::test]
async fn an_exclusion_settles_a_dead_workers_claim_that_never_reached_its_call() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let key = accepted_execution(&app, &campaign, "orphan").await;
    let mut request = claim_request(&key);
    request.now -= chrono::Duration::minutes(10);
    let claimed = app.store.claim_deliveries(&[request], chrono::Duration::seconds(60)).await.unwrap();
    assert!(matches!(claimed[0], DeliveryClaim::Claimed { .. }), "{claimed:?}");
    // The campaign was stopped meanwhile: the redelivered copy is excluded, and the row with it.
    app.store
        .record_delivery(&key, None, DeliveryStatus::Excluded, ("campaign-not-live", None), chrono::Utc::now())
        .await
        .unwrap();
    let execution_id = key.execution_id.to_string();
    assert_eq!(status_of(&app, &execution_id).await["status"], "excluded");
}

#[tokio::test]
async fn a_worker_told_to_stop_starts_no_new_call_while_its_slots_are_busy() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    for n in 0..3 {
        execute(&app, &campaign, &format!("slow-{n}")).await;
    }
    // One slot, slow calls: the second message waits for the slot when the stop comes.
    let provider = Arc::new(ScriptedProvider::with_latency(Duration::from_secs(2)));
    let worker = TestWorker::start_with(&app, provider.clone(), fast_policy(), 1, 10).await;
    let started = std::time::Instant::now();
    while provider.call_count() == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "the worker never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
    assert_eq!(provider.call_count(), 1, "the message waiting for the slot was not started after the stop");
}

#[tokio::test]
async fn a_claim_asked_again_with_its_own_token_still_holds_the_delivery() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let key = accepted_execution(&app, &campaign, "rerun").await;
    let request = claim_request(&key);
    let stale = chrono::Duration::seconds(60);
    let first = app.store.claim_deliveries(std::slice::from_ref(&request), stale).await.unwrap();
    assert!(matches!(first[0], DeliveryClaim::Claimed { .. }), "{first:?}");
    // A batch whose later statement failed is run again item by item: the claim it already wrote
    // is this request's own, not another worker's.
    let again = app.store.claim_deliveries(std::slice::from_ref(&request), stale).await.unwrap();
    assert_eq!(again, vec![DeliveryClaim::Claimed { token: request.token, attempts: 0 }]);
    // Anyone else's copy is busy.
    let other = app.store.claim_deliveries(&[claim_request(&key)], stale).await.unwrap();
    assert_eq!(other, vec![DeliveryClaim::Busy]);
}
