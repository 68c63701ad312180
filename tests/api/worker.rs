//! The worker's delivery loop with a scripted provider: each error class ends in the right state
//! with the right number of provider calls.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_core::Channel;
use herald_core::delivery::{ErrorClass, ProviderError};
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::StatusCode;
use serde_json::{Value, json};

pub(crate) fn transient() -> Result<(), ProviderError> {
    Err(ProviderError::new(ErrorClass::Transient, "TooManyRequestsException", "throttled"))
}

/// Polls `condition` every 50 ms for up to `within`.
async fn eventually<F: Fn() -> Fut, Fut: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    condition: F,
) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Executes the OTP campaign for one phone number and returns the execution id.
pub(crate) async fn execute(app: &TestApp, campaign: &str, request: &str, otp: Value) -> String {
    let reply = app
        .post("/im/executions/unitary", &execution(request, campaign, &[("+33612345678", json!({"otp": otp}))]))
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["executionId"].as_str().unwrap().to_string()
}

pub(crate) async fn recipient(app: &TestApp, execution_id: &str) -> Value {
    app.get(&format!("/im/executions/{execution_id}")).await.body["recipients"][0].clone()
}

pub(crate) async fn wait_for_status(app: &TestApp, execution_id: &str, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let recipient = recipient(app, execution_id).await;
        if recipient["status"] == status {
            return recipient;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still {recipient} instead of {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup() -> (TestApp, String, Arc<ScriptedProvider>) {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    (app, campaign, Arc::new(ScriptedProvider::new()))
}

#[tokio::test]
async fn a_queued_otp_is_rendered_sent_once_and_recorded() {
    let (app, campaign, provider) = setup().await;
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "ok", json!("482913")).await;
    let recipient = wait_for_status(&app, &execution_id, "sent").await;
    assert_eq!(recipient["attempts"], 1);
    let calls = provider.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].channel, calls[0].to.as_str(), calls[0].body.as_str()),
        ("sms", "+33612345678", "Your code is 482913")
    );
    worker.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_in_process_then_sent() {
    let (app, campaign, provider) = setup().await;
    provider.script([transient()]);
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "retry", json!("1")).await;
    assert_eq!(wait_for_status(&app, &execution_id, "sent").await["attempts"], 2);
    assert_eq!(provider.call_count(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_makes_exactly_one_call_and_is_recorded_failed() {
    let (app, campaign, provider) = setup().await;
    let rejection = "bad number +33612345678 for this account";
    provider.script([Err(ProviderError::new(ErrorClass::Permanent, "InvalidParameter", rejection))]);
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "perm", json!("1")).await;
    let recipient = wait_for_status(&app, &execution_id, "failed").await;
    assert_eq!(recipient["reason"], "InvalidParameter");
    // The status says why in the provider's words, with the number redacted.
    let last_error = recipient["lastError"].as_str().unwrap_or_default();
    assert!(last_error.contains("bad number") && last_error.contains("for this account"), "{recipient}");
    assert!(!last_error.contains("+33612345678"), "{recipient}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.call_count(), 1, "a permanent failure is never retried");
    worker.stop().await;
}

#[tokio::test]
async fn exhausted_retries_take_the_tiers_in_order_then_reach_the_dead_letter_queue() {
    let (app, campaign, provider) = setup().await;
    provider.script(std::iter::repeat_with(transient).take(100));
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "dlq", json!("1")).await;
    let recipient = wait_for_status(&app, &execution_id, "failed").await;
    assert_eq!(recipient["reason"], "max-attempts");
    assert_eq!(recipient["attempts"], 6);
    let calls = provider.calls();
    assert_eq!(calls.len(), 6, "2 calls per delivery, 3 deliveries: the first and two tiers");
    // The gaps between deliveries follow the tiers: 1 s, then 2 s.
    let first_gap = calls[2].at.duration_since(calls[1].at);
    let second_gap = calls[4].at.duration_since(calls[3].at);
    assert!(first_gap >= Duration::from_millis(900) && first_gap < Duration::from_millis(1900), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(1900), "{second_gap:?}");

    // The worker copies the dead-letter queue into the database, with the reason and the last
    // error the dead-lettering worker put in the headers.
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = app.store.list_dead_letters(Some("a"), None, None, 10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, format!("{execution_id}/0"));
    assert_eq!(dead[0].reason, "max-attempts");
    assert!(dead[0].last_error.as_deref().unwrap_or_default().contains("TooManyRequestsException"));
    worker.stop().await;
}

#[tokio::test]
async fn an_account_wide_failure_pauses_the_channel_without_using_up_attempts() {
    let (app, campaign, provider) = setup().await;
    provider.script([Err(ProviderError::new(ErrorClass::AccountWide, "AuthorizationError", "not allowed"))]);
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "paused", json!("1")).await;
    let recipient = wait_for_status(&app, &execution_id, "sent").await;
    assert_eq!(recipient["attempts"], 1, "the paused call does not count against the message");
    let calls = provider.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(gap >= Duration::from_millis(4500), "the channel paused for {gap:?}");
    worker.stop().await;
}

#[tokio::test]
async fn failures_in_flight_together_make_one_pause_not_a_longer_one() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    // Slow calls, so that eight messages are at the provider when the account is paused.
    let provider = Arc::new(ScriptedProvider::with_latency(Duration::from_millis(300)));
    provider.script(
        (0..8).map(|_| Err(ProviderError::new(ErrorClass::AccountWide, "AccountSendingPausedException", "paused"))),
    );
    let worker = TestWorker::start_with(&app, provider.clone(), fast_policy(), 16, 100).await;
    let mut executions = Vec::new();
    for i in 0..8 {
        executions.push(execute(&app, &campaign, &format!("burst-{i}"), json!(i.to_string())).await);
    }
    for execution_id in &executions {
        wait_for_status(&app, execution_id, "sent").await;
    }
    worker.stop().await;
    let calls = provider.calls();
    assert_eq!(calls.len(), 16, "eight refused, eight sent");
    let gap = calls[8].at.duration_since(calls[0].at);
    assert!(gap >= Duration::from_millis(4500), "the channel paused for {gap:?}");
    assert!(gap < Duration::from_secs(12), "eight failures at once made a {gap:?} pause instead of 5 s");
}

#[tokio::test]
async fn an_expired_message_is_excluded_without_a_call() {
    let (app, campaign, provider) = setup().await;
    let execution_id = execute(&app, &campaign, "late", json!("1")).await;
    app.clock.advance(chrono::Duration::seconds(301));
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let recipient = wait_for_status(&app, &execution_id, "excluded").await;
    assert_eq!(recipient["reason"], "expired");
    assert_eq!(provider.call_count(), 0);
    worker.stop().await;
}

#[tokio::test]
async fn queued_messages_of_a_stopped_campaign_are_excluded_without_a_call() {
    let (app, campaign, provider) = setup().await;
    let execution_id = execute(&app, &campaign, "stopped", json!("1")).await;
    app.post(&format!("/campaigns/{campaign}/stop"), &Value::Null).await;
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    assert_eq!(wait_for_status(&app, &execution_id, "excluded").await["reason"], "campaign-not-live");
    assert_eq!(provider.call_count(), 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_rendering_error_is_failed_and_not_retried() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let mut document = otp_sms("render");
    document["content"]["body"] = json!("Your code is {{ context.otp | upper }}");
    let campaign = app.live_campaign(&document).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "render", json!(482913)).await;
    assert_eq!(wait_for_status(&app, &execution_id, "failed").await["reason"], "rendering-error");
    assert_eq!(provider.call_count(), 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_message_redelivered_after_its_send_was_recorded_makes_no_call() {
    let (app, campaign, provider) = setup().await;
    let execution_id = execute(&app, &campaign, "twice", json!("1")).await;
    // The same message three times on the queue, as redeliveries and republishes produce.
    let queue = app.topology().queue(Channel::Sms);
    let original = app.topology().drain(&queue).await.remove(0);
    for _ in 0..3 {
        app.topology().publish_copy(&original, Channel::Sms).await;
    }
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    wait_for_status(&app, &execution_id, "sent").await;
    eventually(Duration::from_secs(10), "the copies to be consumed", || async {
        app.topology().count(&queue).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.call_count(), 1, "one send for three deliveries of the same message");
    worker.stop().await;
}

#[tokio::test]
async fn two_workers_share_2000_executions_each_sent_exactly_once() {
    let (app, campaign, _) = setup().await;
    let (first, second) = (Arc::new(ScriptedProvider::new()), Arc::new(ScriptedProvider::new()));
    let worker_a = TestWorker::start(&app, first.clone(), fast_policy()).await;
    let worker_b = TestWorker::start(&app, second.clone(), fast_policy()).await;
    let app = Arc::new(app);
    let total = 2_000;
    let calls: Vec<_> = (0..total)
        .map(|n| {
            let (app, campaign) = (Arc::clone(&app), campaign.clone());
            async move { execute(&app, &campaign, &format!("pair-{n}"), json!(format!("{n:06}"))).await }
        })
        .collect();
    futures_util::stream::iter(calls).buffer_unordered(32).collect::<Vec<_>>().await;
    eventually(Duration::from_secs(60), "2000 sends", || async { first.call_count() + second.call_count() >= total })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies: Vec<String> = first.calls().into_iter().chain(second.calls()).map(|c| c.body).collect();
    let distinct: HashSet<&String> = bodies.iter().collect();
    assert_eq!(bodies.len(), total as usize, "no duplicate sends");
    assert_eq!(distinct.len(), total as usize, "every execution sent");
    assert!(
        first.call_count() > 0 && second.call_count() > 0,
        "both workers did work: {} / {}",
        first.call_count(),
        second.call_count()
    );
    worker_a.stop().await;
    worker_b.stop().await;
}

#[tokio::test]
async fn a_dead_letter_is_listed_and_its_replay_delivers_it_once() {
    let (app, campaign, provider) = setup().await;
    provider.script(std::iter::repeat_with(transient).take(6));
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let execution_id = execute(&app, &campaign, "replay", json!("1")).await;
    assert_eq!(wait_for_status(&app, &execution_id, "failed").await["reason"], "max-attempts");

    let path = format!("/dead-letters?campaignId={campaign}&reason=max-attempts");
    eventually(Duration::from_secs(10), "the dead letter to be recorded", || async {
        app.get(&path).await.body["items"].as_array().is_some_and(|items| items.len() == 1)
    })
    .await;
    let listed = app.get(&path).await.body;
    let letter = &listed["items"][0];
    assert_eq!(letter["executionId"], execution_id.as_str());
    assert!(letter["lastError"].as_str().unwrap().contains("TooManyRequestsException"));
    assert!(letter.get("body").is_none(), "the body (addresses, context) is not listed");
    let other = app.key_for("b", &herald_core::Scope::ALL).await;
    let hidden = app.call(reqwest::Method::GET, "/dead-letters", Some(&other), None).await;
    assert_eq!(hidden.body["items"], json!([]), "another sandbox sees none");

    let id = letter["id"].as_str().unwrap();
    let first = app.post(&format!("/dead-letters/{id}/replay"), &Value::Null).await;
    assert_eq!((first.status, first.body["replayed"].as_bool()), (StatusCode::ACCEPTED, Some(true)));
    let again = app.post(&format!("/dead-letters/{id}/replay"), &Value::Null).await;
    assert_eq!((again.status, again.body["replayed"].as_bool()), (StatusCode::OK, Some(false)), "replay is idempotent");

    assert_eq!(wait_for_status(&app, &execution_id, "sent").await["attempts"], 1, "a fresh budget of attempts");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(provider.call_count(), 7, "six failed calls, then exactly one send");
    worker.stop().await;
}

#[tokio::test]
async fn a_campaign_throttle_holds_across_two_workers() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let mut document = otp_sms("throttled");
    document["throttleRatePerSec"] = json!(20);
    let campaign = app.live_campaign(&document).await;
    for n in 0..300 {
        execute(&app, &campaign, &format!("t-{n}"), json!(n)).await;
    }
    let (first, second) = (Arc::new(ScriptedProvider::new()), Arc::new(ScriptedProvider::new()));
    let worker_a = TestWorker::start(&app, first.clone(), fast_policy()).await;
    let worker_b = TestWorker::start(&app, second.clone(), fast_policy()).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    worker_a.stop().await;
    worker_b.stop().await;

    let mut times: Vec<Instant> = first.calls().into_iter().chain(second.calls()).map(|c| c.at).collect();
    times.sort();
    let start = times[0];
    let window = times.iter().filter(|at| at.duration_since(start) < Duration::from_secs(10)).count();
    println!("throttle of 20/s across two workers: {window} sends in the first 10 s");
    assert!(window <= 210, "{window} sends in 10 s with a throttle of 20/s");
    assert!(window >= 180, "{window} sends in 10 s: the throttle should still let 20/s through");
    assert!(first.call_count() > 0 && second.call_count() > 0, "both workers sent");
}

/// A dead worker's claim on the delivery of `execution_id`, taken ten minutes ago; with
/// `call_started`, the worker had also marked its provider call as started.
async fn claim_as_a_dead_worker(app: &TestApp, campaign: &str, execution_id: &str, call_started: bool) {
    let key = herald_store::DeliveryKey {
        execution_id: execution_id.parse().unwrap(),
        recipient_index: 0,
        campaign_id: campaign.parse().unwrap(),
        channel: herald_core::Channel::Sms,
    };
    let long_ago = herald_core::Clock::now(app.clock.as_ref()) - chrono::Duration::minutes(10);
    let token = uuid::Uuid::now_v7();
    let claim = app
        .store
        .claim_deliveries(
            &[herald_store::ClaimRequest {
                key: key.clone(),
                version_id: None,
                token,
                now: long_ago,
                accepted_at: long_ago,
                resend_abandoned: false,
                suppression: None,
            }],
            chrono::Duration::seconds(60),
        )
        .await
        .unwrap()
        .remove(0);
    assert!(matches!(claim, herald_store::DeliveryClaim::Claimed { .. }));
    if call_started {
        let start = herald_store::CallStart { key, token, now: long_ago };
        assert_eq!(app.store.mark_calls_started(&[start]).await.unwrap(), vec![true]);
    }
}

#[tokio::test]
async fn a_claim_left_sending_by_a_worker_that_died_during_the_call_is_recorded_unknown_and_not_resent() {
    let (app, campaign, provider) = setup().await;
    let execution_id = execute(&app, &campaign, "crashed", json!("1")).await;
    claim_as_a_dead_worker(&app, &campaign, &execution_id, true).await;

    // Its message is redelivered to a live worker.
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let recipient = wait_for_status(&app, &execution_id, "unknown").await;
    assert_eq!(recipient["reason"], "worker-died-during-send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.call_count(), 0, "maybe sent is not sent again");
    worker.stop().await;
}

#[tokio::test]
async fn a_claim_left_by_a_worker_that_died_before_calling_is_sent_once() {
    let (app, campaign, provider) = setup().await;
    let execution_id = execute(&app, &campaign, "died-before-call", json!("1")).await;
    claim_as_a_dead_worker(&app, &campaign, &execution_id, false).await;

    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let recipient = wait_for_status(&app, &execution_id, "sent").await;
    assert_eq!(recipient["attempts"], 1, "{recipient}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(provider.call_count(), 1, "the provider never saw the dead worker's claim: sent exactly once");
    worker.stop().await;
}

#[tokio::test]
async fn an_unknown_aep_recipient_gets_an_identity_only_profile_when_the_campaign_creates_profiles() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let mut document = otp_sms("creating");
    document["createNewProfiles"] = json!(true);
    let campaign = app.live_campaign(&document).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let body = json!({"requestId": "new", "campaignId": campaign, "recipients": [
        {"type": "aep", "userId": "newcomer", "context": {"otp": "1"}},
        {"type": "aep", "userId": "with-phone", "channelData": {"mobilePhoneNumber": "+33612345670"}, "context": {"otp": "2"}}
    ]});
    let reply = app.post("/im/executions/unitary", &body).await;
    let execution_id = reply.body["executionId"].as_str().unwrap().to_string();
    let started = Instant::now();
    let recipients = loop {
        let status = app.get(&format!("/im/executions/{execution_id}")).await.body;
        if status["recipients"].as_array().unwrap().iter().all(|r| r["status"] != "queued") {
            break status["recipients"].clone();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (recipients[0]["status"].as_str(), recipients[0]["reason"].as_str()),
        (Some("excluded"), Some("no-address"))
    );
    assert_eq!(recipients[1]["status"], "sent");
    let created = app.get("/profiles/phone/newcomer").await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.body["attributes"], json!({}), "only the identity is stored; context never is");
    assert_eq!(created.body["phoneNumber"], Value::Null);
    worker.stop().await;
}

#[tokio::test]
async fn a_campaign_that_opts_in_resends_a_delivery_abandoned_by_a_dead_worker() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let mut document = otp_sms("resending");
    document["resendMaybeSent"] = json!(true);
    let campaign = app.live_campaign(&document).await;
    let provider = Arc::new(ScriptedProvider::new());
    let execution_id = execute(&app, &campaign, "crashed", json!("1")).await;
    let key = herald_store::DeliveryKey {
        execution_id: execution_id.parse().unwrap(),
        recipient_index: 0,
        campaign_id: campaign.parse().unwrap(),
        channel: herald_core::Channel::Sms,
    };
    let long_ago = herald_core::Clock::now(app.clock.as_ref()) - chrono::Duration::minutes(10);
    app.store
        .claim_deliveries(
            &[herald_store::ClaimRequest {
                key: key.clone(),
                version_id: None,
                token: uuid::Uuid::now_v7(),
                now: long_ago,
                accepted_at: long_ago,
                resend_abandoned: false,
                suppression: None,
            }],
            chrono::Duration::seconds(60),
        )
        .await
        .unwrap()
        .remove(0);

    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    wait_for_status(&app, &execution_id, "sent").await;
    assert_eq!(provider.call_count(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn with_the_database_gone_a_worker_pauses_without_calling_the_provider() {
    use herald_worker::pipeline::{Decision, Pipeline, PipelineSettings};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = herald_store::Store::connect(&format!("postgres://postgres@127.0.0.1:{port}/herald"), 2).unwrap();
    let provider = Arc::new(ScriptedProvider::new());
    let settings = PipelineSettings {
        policy: fast_policy(),
        stale_claim: chrono::Duration::seconds(60),
        database_pause: Duration::from_millis(500),
        max_batch: 256,
        batch_writers: 2,
        channel_rates: Vec::new(),
        ses_configuration_set: None,
        metrics: Arc::default(),
    };
    let pipeline = Pipeline::new(store, provider.clone(), Arc::new(herald_core::SystemClock), settings);
    let envelope = json!({
        "version": 1, "executionId": uuid::Uuid::now_v7(), "requestId": "r", "campaignId": uuid::Uuid::now_v7(),
        "sandbox": "a", "channel": "sms", "recipientIndex": 0,
        "recipient": {"type": "external", "userId": "+33612345678", "namespace": "phone"},
        "context": {"otp": "1"}, "profile": {}, "acceptedAt": chrono::Utc::now()
    });
    let decision = pipeline.process(&serde_json::to_vec(&envelope).unwrap(), 0).await;
    assert_eq!(
        decision,
        Decision::Pause { pause: Some(Duration::from_millis(500)), reason: "database-unavailable".into() }
    );
    assert_eq!(provider.call_count(), 0);

    // A message that is not an envelope is dead-lettered, database or not: it can never succeed.
    let decision = pipeline.process(b"{not json", 0).await;
    assert!(matches!(decision, Decision::DeadLetter { reason, .. } if reason == "invalid-message"));
}
