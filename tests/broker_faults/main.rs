//! Broker faults on the shared broker, in a test binary of their own: each test connects as a
//! RabbitMQ user of its own and cuts only that user's connections
//! (`rabbitmqctl close_all_user_connections`), so nothing else on the broker is disturbed. The
//! tests here take turns so that each cut lands on one test's traffic only. Restarts of a whole
//! broker run against a private node in the fault suite (`tests/faults`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::Channel;
use herald_tests::fixtures::otp_sms;
use herald_tests::{TestApp, TestOptions, execution};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Mutex;

const REQUESTS: usize = 3_000;

/// Each test here cuts its connections mid-run; one at a time keeps the timings readable.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const CONCURRENCY: usize = 8;

#[derive(Debug, Default)]
struct Outcomes {
    /// request id → execution id of its 202.
    accepted: HashMap<String, String>,
    /// Requests that saw at least one non-202 before their 202.
    retried: HashSet<String>,
    /// When each 202 arrived.
    accepted_at: Vec<Instant>,
}

#[tokio::test]
async fn closing_the_apis_broker_connections_mid_run_loses_nothing_and_duplicates_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let user = herald_tests::broker::DedicatedUser::create();
    let app =
        Arc::new(TestApp::spawn_with(TestOptions { amqp_url: Some(user.url()), ..TestOptions::with_broker() }).await);
    let id = app.live_campaign(&otp_sms("otp")).await;
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let clients: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (app, id, outcomes, next) = (Arc::clone(&app), id.clone(), Arc::clone(&outcomes), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n >= REQUESTS {
                        return;
                    }
                    let request_id = format!("fault-{n}");
                    let body = execution(&request_id, &id, &[("+33612345678", json!({"otp": format!("{n:06}")}))]);
                    let started = Instant::now();
                    loop {
                        let reply = app.post("/im/executions/unitary", &body).await;
                        match reply.status {
                            StatusCode::ACCEPTED => {
                                let mut outcomes = outcomes.lock().await;
                                outcomes.accepted.insert(
                                    request_id.clone(),
                                    reply.body["executionId"].as_str().unwrap().to_string(),
                                );
                                outcomes.accepted_at.push(Instant::now());
                                break;
                            }
                            StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT => {
                                outcomes.lock().await.retried.insert(request_id.clone());
                                assert!(started.elapsed() < Duration::from_secs(60), "{request_id} never accepted");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            other => panic!("{request_id}: unexpected {other}: {}", reply.body),
                        }
                    }
                }
            })
        })
        .collect();

    // Let part of the run through, then cut every connection of the api.
    let started = Instant::now();
    while outcomes.lock().await.accepted.len() < REQUESTS / 4 {
        assert!(started.elapsed() < Duration::from_secs(120), "a quarter of the requests were never accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    user.close_connections().await;
    // The command returns once the connections are closed.
    let cut_at = Instant::now();
    let broker = app.ingest.as_ref().unwrap().broker().clone();
    assert!(outcomes.lock().await.accepted.len() < REQUESTS, "the run ended before the cut; make it longer");

    for client in clients {
        client.await.unwrap();
    }
    let outcomes = outcomes.lock().await;
    assert_eq!(outcomes.accepted.len(), REQUESTS, "every request ends in exactly one 202");
    assert!(broker.sessions_established() >= 2, "the api never lost (and re-established) its broker session");
    let after_cut: Vec<&Instant> = outcomes.accepted_at.iter().filter(|at| **at > cut_at).collect();
    let first_after = after_cut.iter().min().expect("requests were accepted after the cut");
    let recovery = first_after.duration_since(cut_at);
    assert!(recovery < Duration::from_secs(10), "reconnect took {recovery:?}");

    let messages = app.topology().drain(&app.topology().queue(Channel::Sms)).await;
    let ids: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    let expected: HashSet<String> = outcomes.accepted.values().map(|execution| format!("{execution}/0")).collect();
    assert_eq!(distinct.len(), expected.len());
    assert!(expected.iter().all(|id| distinct.contains(id)), "every 202 has its message on the queue");
    // A message confirmed by the broker whose confirm was lost with the connection is published
    // again by the client's retry under the same message id (the worker deduplicates on it);
    // only retried requests can have such a twin.
    let duplicates = ids.len() - distinct.len();
    assert!(
        duplicates <= outcomes.retried.len(),
        "{duplicates} duplicates for {} retried requests",
        outcomes.retried.len()
    );
    println!(
        "requests={REQUESTS} retried={} duplicates_by_message_id={duplicates} first_202_after_cut={recovery:?} sessions={}",
        outcomes.retried.len(),
        broker.sessions_established()
    );
}

#[tokio::test]
async fn a_worker_survives_losing_its_broker_connection_and_sends_everything_once() {
    use herald_tests::worker::{TestWorker, fast_policy};
    use herald_worker::providers::fake::ScriptedProvider;
    let _alone = ONE_AT_A_TIME.lock().await;

    let user = herald_tests::broker::DedicatedUser::create();
    let app = TestApp::spawn_with(TestOptions { amqp_url: Some(user.url()), ..TestOptions::with_broker() }).await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    // Slow sends, so that the cut lands while deliveries are in flight.
    let provider = Arc::new(ScriptedProvider::with_latency(Duration::from_millis(20)));
    let broker = app.ingest.as_ref().unwrap().broker().clone();
    let started = Instant::now();
    while broker.sessions_established() == 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "the api never connected to RabbitMQ");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = 600;
    for n in 0..total {
        let body = execution(&format!("w-{n}"), &id, &[("+33612345678", json!({"otp": format!("{n:06}")}))]);
        assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
    }
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let started = Instant::now();
    while provider.call_count() < (total / 4) as u64 {
        assert!(started.elapsed() < Duration::from_secs(120), "the worker never sent a quarter of the messages");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    user.close_connections().await;

    let started = Instant::now();
    while provider.call_count() < total as u64 {
        assert!(started.elapsed() < Duration::from_secs(60), "stuck at {} of {total} sends", provider.call_count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bodies: Vec<String> = provider.calls().into_iter().map(|call| call.body).collect();
    let distinct: HashSet<&String> = bodies.iter().collect();
    assert_eq!(distinct.len(), total, "every message sent");
    assert_eq!(
        bodies.len(),
        total,
        "none sent twice: deliveries unacked at the cut were redelivered and found decided"
    );
    worker.stop().await;
}

/// A queue deleted under a running worker (an operator's mistake, a broker policy): the broker
/// cancels that consumer; the worker starts a new session, declares the topology again, and the
/// channel works again.
#[tokio::test]
async fn a_worker_whose_queue_disappears_declares_it_again_and_goes_on() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&otp_sms("otp")).await;
    let provider = Arc::new(herald_worker::providers::fake::ScriptedProvider::new());
    let worker =
        herald_tests::worker::TestWorker::start(&app, provider.clone(), herald_tests::worker::fast_policy()).await;
    let send = |n: usize| execution(&format!("gone-{n}"), &id, &[("+33612345678", json!({"otp": format!("{n}")}))]);
    assert_eq!(app.post("/im/executions/unitary", &send(0)).await.status, StatusCode::ACCEPTED);

    let connection = herald_tests::broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = app.topology().queue(Channel::Sms);
    channel.queue_delete(queue.as_str().into(), lapin::options::QueueDeleteOptions::default()).await.unwrap();

    // Until the worker has declared the queue again, executions are refused (503), never lost.
    let started = Instant::now();
    let mut n = 1;
    loop {
        let reply = app.post("/im/executions/unitary", &send(n)).await;
        if reply.status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
        assert!(started.elapsed() < Duration::from_secs(30), "the sms queue never came back");
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    while !provider.calls().iter().any(|call| call.body.ends_with(&format!(" {n}"))) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the message accepted after the queue came back was not sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn cutting_a_tests_connections_leaves_every_other_connection_on_the_broker_untouched() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    let user = herald_tests::broker::DedicatedUser::create();
    let properties = || lapin::ConnectionProperties::default();
    let ours = lapin::Connection::connect(&user.url(), properties()).await.expect("connect as the test's user");
    // Someone else's connection on the same broker (the shared guest user, as other tests and
    // other processes on this machine use it).
    let bystander = herald_tests::broker::connect().await;
    user.close_connections().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ours.status().connected() {
        assert!(Instant::now() < deadline, "the test's own connection was not cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bystander.status().connected(), "the bystander's connection was cut");
    let channel = bystander.create_channel().await.expect("the bystander still opens channels");
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    channel.queue_declare("".into(), options, FieldTable::default()).await.expect("and still declares queues");
    let _ = bystander.close(200, "done".into()).await;
}

/// The broker connections cut twice while an audience fan-out publishes (the API's and the
/// worker's): a page whose publish failed is published again under the same message ids, and
/// every member is sent exactly once; every queue drains.
#[tokio::test]
async fn a_fan_out_cut_off_from_the_broker_twice_sends_each_member_once() {
    use herald_tests::worker::{TestWorker, fast_policy};
    use herald_worker::providers::fake::ScriptedProvider;
    let _alone = ONE_AT_A_TIME.lock().await;
    let user = herald_tests::broker::DedicatedUser::create();
    let app = TestApp::spawn_with(TestOptions { amqp_url: Some(user.url()), ..TestOptions::with_broker() }).await;
    let mut document = otp_sms("otp");
    // About three seconds of publishing, so both cuts land mid-fan-out.
    document["throttleRatePerSec"] = json!(1_000);
    let id = app.live_campaign(&document).await;
    let provider = Arc::new(ScriptedProvider::new());
    let _worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let total = 3_000;
    let audience = app.post("/audiences", &json!({"name": "cut"})).await.body["id"].as_str().unwrap().to_string();
    let lines: String = (0..total).map(|i| format!("{{\"userId\":\"+336{i:08}\"}}\n")).collect();
    let uploaded = app
        .http
        .put(format!("{}/audiences/{audience}/members?namespace=phone", app.address))
        .bearer_auth(&app.key)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), StatusCode::OK);
    let body = json!({"requestId": "cut", "campaignId": id, "audience": {"id": audience}, "context": {"otp": "1"}});
    let reply = app.post("/im/executions/audience", &body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let execution = reply.body["executionId"].as_str().unwrap().to_string();
    for share in [4, 2] {
        let started = Instant::now();
        while provider.call_count() < (total / share) as u64 {
            assert!(started.elapsed() < Duration::from_secs(60), "stuck at {} sends", provider.call_count());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        user.close_connections().await;
    }
    let started = Instant::now();
    let status = loop {
        let status = app.get(&format!("/im/executions/audience/{execution}")).await.body;
        if status["progress"]["sent"] == total {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "not every member sent: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["status"], "Succeeded", "{status}");
    assert_eq!(status["progress"]["published"], total);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let numbers: Vec<String> = provider.calls().into_iter().map(|call| call.to).collect();
    let distinct: HashSet<&String> = numbers.iter().collect();
    assert_eq!((numbers.len(), distinct.len()), (total, total), "each member exactly once");
    let broker = app.ingest.as_ref().unwrap().broker();
    let started = Instant::now();
    loop {
        let mut held = 0;
        for queue in app.topology().topology.queues() {
            held += broker.queue_state(&queue).await.map_or(u32::MAX, |state| state.messages);
        }
        if held == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{held} messages left in the queues");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
