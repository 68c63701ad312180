//! Fair, cost-aware limits (issue #11): recipient rates per key and per sandbox and daily quotas
//! per sandbox and channel, shared by API processes through PostgreSQL; and fairness between
//! sandboxes in the worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Channel, Clock, Scope};
use herald_ingest::ratelimit::Limits;
use herald_tests::fixtures::{otp_sms, password_reset_email};
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{Reply, TestApp, TestOptions};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn with_limits(limits: Limits) -> TestOptions {
    TestOptions { limits, ..TestOptions::with_broker() }
}

/// An SMS execution to `count` recipients (numbers from `first`).
fn sms(request_id: &str, campaign: &str, first: usize, count: usize) -> Value {
    let recipients: Vec<Value> = (first..first + count)
        .map(|n| json!({"type": "external", "userId": format!("+336{n:08}"), "context": {"otp": "1"}}))
        .collect();
    json!({"requestId": request_id, "campaignId": campaign, "recipients": recipients})
}

async fn execute(app: &TestApp, key: &str, body: &Value) -> Reply {
    app.call(Method::POST, "/im/executions/unitary", Some(key), Some(body)).await
}

fn retry_after(reply: &Reply) -> u64 {
    let header = reply.headers.get("retry-after").unwrap_or_else(|| panic!("no Retry-After: {}", reply.body));
    header.to_str().unwrap().parse().unwrap()
}

/// Asserts a 429 naming `limit` (and `kind` as its problem type).
fn assert_limited(reply: &Reply, kind: &str, limit: &str) {
    reply.assert_problem(StatusCode::TOO_MANY_REQUESTS, kind);
    assert_eq!(reply.body["limit"], limit, "{}", reply.body);
    assert!(retry_after(reply) >= 1, "{}", reply.body);
}

#[tokio::test]
async fn the_rate_counts_recipients_not_requests() {
    // One recipient a second, banked up to 20: one request to 20 recipients uses all of it.
    let app = TestApp::spawn_with(with_limits(Limits { sandbox_per_sec: 1, ..Limits::none() })).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    assert_eq!(execute(&app, &app.key, &sms("r-1", &campaign, 0, 20)).await.status, StatusCode::ACCEPTED);

    let refused = execute(&app, &app.key, &sms("r-2", &campaign, 100, 1)).await;
    assert_limited(&refused, "rate-limited", "sandbox-rate");
    assert_eq!(refused.body["limitValue"], 1);
    assert_eq!(refused.body["report"]["additionalContext"]["requestId"], "r-2");
    // Twenty recipients need twenty seconds of refill (less what came back meanwhile), one needs
    // about one.
    let twenty = execute(&app, &app.key, &sms("r-3", &campaign, 200, 20)).await;
    assert_limited(&twenty, "rate-limited", "sandbox-rate");
    assert!((17..=20).contains(&retry_after(&twenty)), "{:?}", twenty.headers);
    assert!(retry_after(&refused) <= 1, "{:?}", refused.headers);
    assert_eq!(app.topology().count(&app.topology().queue(Channel::Sms)).await, 20, "nothing refused was published");
}

#[tokio::test]
async fn a_burst_of_tiny_requests_is_refused_once_its_recipients_reach_the_rate() {
    // The abuse of the issue: many requests, each cheap, that used to count as one each.
    let app = TestApp::spawn_with(with_limits(Limits { sandbox_per_sec: 2, ..Limits::none() })).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let started = Instant::now();
    let mut accepted = 0;
    for n in 0..30 {
        let reply = execute(&app, &app.key, &sms(&format!("t-{n}"), &campaign, n * 5, 5)).await;
        match reply.status {
            StatusCode::ACCEPTED => accepted += 1,
            _ => assert_limited(&reply, "rate-limited", "sandbox-rate"),
        }
    }
    // 20 banked, plus 2 a second for the time this takes.
    let allowed = 20.0 + 2.0 * started.elapsed().as_secs_f64();
    assert!(accepted >= 4 && f64::from(accepted * 5) <= allowed, "{accepted} requests of 5 recipients accepted");
}

#[tokio::test]
async fn at_the_default_limits_one_key_cannot_push_10000_sms_through_in_seconds() {
    // The abuse of the issue: 500 calls of 20 recipients, as fast as one key can send them, which
    // used to be accepted in 2.56 s. Now the key's 500 recipients a second (banked for a second)
    // hold, whichever of two API processes is asked.
    let app = TestApp::spawn_with(with_limits(Limits::default())).await;
    let peer = app.spawn_peer().await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let started = Instant::now();
    let mut accepted = 0;
    for n in 0..500 {
        let process = if n % 2 == 0 { &app } else { &peer };
        let reply = execute(process, &app.key, &sms(&format!("d-{n}"), &campaign, n * 20, 20)).await;
        match reply.status {
            StatusCode::ACCEPTED => accepted += 20,
            _ => assert_limited(&reply, "rate-limited", "key-rate"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 500.0 + 500.0 * elapsed;
    assert!(f64::from(accepted) <= allowed, "{accepted} recipients accepted in {elapsed:.2} s");
    assert!(accepted >= 500, "the first second's worth is accepted ({accepted})");
}

#[tokio::test]
async fn the_sandbox_rate_holds_across_two_api_processes() {
    let app = TestApp::spawn_with(with_limits(Limits { sandbox_per_sec: 1, ..Limits::none() })).await;
    let peer = app.spawn_peer().await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let mut statuses = Vec::new();
    for n in 0..6 {
        let process = if n % 2 == 0 { &app } else { &peer };
        let reply = execute(process, &app.key, &sms(&format!("x-{n}"), &campaign, n * 4, 4)).await;
        if reply.status != StatusCode::ACCEPTED {
            assert_limited(&reply, "rate-limited", "sandbox-rate");
        }
        statuses.push(reply.status.as_u16());
    }
    // 20 recipients between the two processes, not 20 each.
    assert_eq!(statuses, [202, 202, 202, 202, 202, 429]);
    let refused_on_the_other = execute(&app, &app.key, &sms("x-6", &campaign, 100, 4)).await;
    assert_limited(&refused_on_the_other, "rate-limited", "sandbox-rate");
}

#[tokio::test]
async fn a_key_over_its_rate_leaves_the_other_keys_of_its_sandbox_their_share() {
    let limits = Limits { sandbox_per_sec: 1_000, key_per_sec: 1, ..Limits::none() };
    let app = TestApp::spawn_with(with_limits(limits)).await;
    let peer = app.spawn_peer().await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let client = app.key_for("a", &[Scope::ExecutionsWrite]).await;
    assert_eq!(execute(&app, &client, &sms("k-1", &campaign, 0, 12)).await.status, StatusCode::ACCEPTED);
    assert_eq!(execute(&peer, &client, &sms("k-2", &campaign, 20, 8)).await.status, StatusCode::ACCEPTED);

    let refused = execute(&peer, &client, &sms("k-3", &campaign, 40, 2)).await;
    assert_limited(&refused, "rate-limited", "key-rate");
    assert_eq!(refused.body["limitValue"], 1);
    // The sandbox's admin key is not starved by its client key.
    assert_eq!(execute(&app, &app.key, &sms("k-4", &campaign, 60, 20)).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_daily_sms_quota_is_shared_names_its_channel_and_resets_at_utc_midnight() {
    let limits = Limits { daily_sms: 30, daily_email: 1, ..Limits::none() };
    let app = TestApp::spawn_with(with_limits(limits)).await;
    let peer = app.spawn_peer().await;
    let now = app.clock.now();
    let eleven_pm = now.date_naive().and_hms_opt(23, 0, 0).unwrap().and_utc() + chrono::Duration::days(1);
    app.clock.set(eleven_pm);
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let reset = app.live_campaign(&password_reset_email("reset")).await;
    assert_eq!(execute(&app, &app.key, &sms("q-1", &campaign, 0, 20)).await.status, StatusCode::ACCEPTED);
    assert_eq!(execute(&peer, &app.key, &sms("q-2", &campaign, 20, 10)).await.status, StatusCode::ACCEPTED);

    let refused = execute(&app, &app.key, &sms("q-3", &campaign, 30, 1)).await;
    assert_limited(&refused, "quota-exceeded", "daily-quota");
    assert_eq!((refused.body["channel"].as_str(), refused.body["limitValue"].as_i64()), (Some("sms"), Some(30)));
    assert_eq!(retry_after(&refused), 3_600, "until midnight UTC");
    assert_limited(&execute(&peer, &app.key, &sms("q-4", &campaign, 30, 1)).await, "quota-exceeded", "daily-quota");

    // Email has its own quota in the same sandbox; another sandbox has its own SMS quota.
    let email = json!({"requestId": "q-5", "campaignId": reset,
        "recipients": [{"type": "external", "userId": "jane@example.com", "context": {"resetUrl": "https://x.example/r"}}]});
    assert_eq!(execute(&app, &app.key, &email).await.status, StatusCode::ACCEPTED);
    let other = app.key_for("b", &Scope::ALL).await;
    let created = app.call(Method::POST, "/campaigns", Some(&other), Some(&otp_sms("otp"))).await;
    let theirs = created.body["id"].as_str().unwrap().to_string();
    app.call(Method::POST, &format!("/campaigns/{theirs}/activate"), Some(&other), Some(&Value::Null)).await;
    assert_eq!(execute(&peer, &other, &sms("q-6", &theirs, 0, 20)).await.status, StatusCode::ACCEPTED);

    app.clock.advance(chrono::Duration::hours(1));
    assert_eq!(execute(&app, &app.key, &sms("q-7", &campaign, 30, 20)).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn refused_replayed_and_failed_executions_use_no_quota_and_a_replay_still_gets_its_202() {
    let app = TestApp::spawn_with(with_limits(Limits { daily_sms: 3, ..Limits::none() })).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    // Invalid: refused before the quota.
    let invalid = json!({"requestId": "f-0", "campaignId": campaign,
        "recipients": [{"type": "external", "userId": "+33600000001", "context": {"otpp": "1"}}]});
    execute(&app, &app.key, &invalid).await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    let first = sms("f-1", &campaign, 0, 3);
    let accepted = execute(&app, &app.key, &first).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);

    // The quota is used up, yet the client's retry of an accepted request gets its 202.
    let replay = execute(&app, &app.key, &first).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.body);
    assert_eq!(replay.body["executionId"], accepted.body["executionId"]);
    assert_eq!(replay.headers["idempotent-replayed"], "true");

    // A request refused by the quota is released: once there is quota again, its retry is
    // accepted under the same request id.
    let refused = sms("f-2", &campaign, 10, 1);
    assert_limited(&execute(&app, &app.key, &refused).await, "quota-exceeded", "daily-quota");
    app.clock.advance(chrono::Duration::days(1));
    assert_eq!(execute(&app, &app.key, &refused).await.status, StatusCode::ACCEPTED);
    assert_eq!(app.topology().count(&app.topology().queue(Channel::Sms)).await, 4);
}

#[tokio::test]
async fn a_failed_publish_gives_its_recipients_back_to_the_quota() {
    let limits = Limits { daily_sms: 10, ..Limits::none() };
    let app = TestApp::spawn_with(TestOptions { max_queue_length: Some(1), ..with_limits(limits) }).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let queue = app.topology().queue(Channel::Sms);
    // Fill the queue until the broker refuses (a quorum queue may overshoot its bound a little).
    let mut accepted = 0;
    let mut refused = None;
    for n in 0..10 {
        let reply = execute(&app, &app.key, &sms(&format!("p-{n}"), &campaign, n, 1)).await;
        if reply.status != StatusCode::ACCEPTED {
            reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            refused = Some(n);
            break;
        }
        accepted += 1;
    }
    let refused = refused.expect("the queue never filled up");
    // Then, draining as a consumer would: the refused request's retry and new ones are accepted
    // until exactly the quota is used, so the refused attempt counted nothing.
    for n in refused..20 {
        app.topology().drain(&queue).await;
        let reply = execute(&app, &app.key, &sms(&format!("p-{n}"), &campaign, n, 1)).await;
        if reply.status != StatusCode::ACCEPTED {
            assert_limited(&reply, "quota-exceeded", "daily-quota");
            break;
        }
        accepted += 1;
    }
    assert_eq!(accepted, 10);
}

#[tokio::test]
async fn one_sandbox_s_burst_does_not_hold_back_another_s_otp() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let topology = &app.topology().topology;
    assert_ne!(topology.shard_of("a"), topology.shard_of("b"), "the test needs two shards");
    let burst = app.live_campaign(&otp_sms("burst")).await;
    let other = app.key_for("b", &Scope::ALL).await;
    let created = app.call(Method::POST, "/campaigns", Some(&other), Some(&otp_sms("otp"))).await;
    let otp = created.body["id"].as_str().unwrap().to_string();
    app.call(Method::POST, &format!("/campaigns/{otp}/activate"), Some(&other), Some(&Value::Null)).await;
    // 2,000 messages of sandbox `a` queued before the worker starts; the worker sends 4 at a
    // time, 20 ms each: 10 s of work in front of whatever shares their queue.
    for n in 0..100 {
        let reply = execute(&app, &app.key, &sms(&format!("burst-{n}"), &burst, n * 20, 20)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let provider = Arc::new(ScriptedProvider::with_latency(Duration::from_millis(20)));
    let worker = TestWorker::start_with(&app, provider.clone(), fast_policy(), 4, 50).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let accepted = Instant::now();
    let reply = execute(&app, &other, &sms("otp-1", &otp, 99_999_999, 1)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let ours = "+33699999999";
    while !provider.calls().iter().any(|call| call.to == ours) {
        assert!(accepted.elapsed() < Duration::from_secs(30), "the OTP was never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waited = accepted.elapsed();
    let sent_before = provider.calls().iter().position(|call| call.to == ours).unwrap();
    worker.stop().await;
    assert!(waited < Duration::from_secs(2), "the OTP waited {waited:?} behind the burst");
    assert!(sent_before < 1_000, "the OTP went out after {sent_before} of the burst's messages");
}

#[tokio::test]
async fn messages_queued_before_sharding_are_still_sent() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let topology = app.topology().topology.clone();
    assert_ne!(topology.shard_of("a"), 0, "the test needs sandbox `a` outside the old queue");
    // A release before sharding declared one queue per channel and published with key `sms`.
    let connection = herald_tests::broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let old = herald_broker::Topology { shards: 1, ..topology.clone() };
    old.declare(&channel).await.expect("the old topology declares over the new one");
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let accepted = execute(&app, &app.key, &sms("old-1", &campaign, 0, 1)).await;
    let execution_id = accepted.body["executionId"].as_str().unwrap().to_string();
    let message = app.topology().drain(&app.topology().queue(Channel::Sms)).await.remove(0);
    let properties = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(message.message_id.clone().into())
        .with_headers(message.headers.clone());
    let body = serde_json::to_vec(&message.body).unwrap();
    let options = lapin::options::BasicPublishOptions::default();
    let confirm = channel.basic_publish(topology.work_exchange().into(), "sms".into(), options, &body, properties);
    confirm.await.unwrap().await.unwrap();
    assert_eq!(app.topology().count(&topology.channel_queue(Channel::Sms)).await, 1);

    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let started = Instant::now();
    loop {
        let status = app.get(&format!("/im/executions/{execution_id}")).await;
        if status.body["recipients"][0]["status"] == "sent" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never sent: {}", status.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    assert_eq!(provider.call_count(), 1);
    let _ = connection.close(200, "done".into()).await;
}
