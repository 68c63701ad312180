//! Test apps and workers own every task they start, as `herald` processes own their jobs: once
//! dropped, nothing of theirs runs on. Counted with the runtime's own live-task count, which a
//! `#[tokio::test]` runtime keeps for this test alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions};
use herald_worker::providers::fake::ScriptedProvider;
use serde_json::json;

use crate::worker::{execute, wait_for_status};

/// Waits up to 15 s for the runtime's live tasks to come down to `count` (an aborted task is
/// dropped by the runtime a moment after its owner, and a pooled connection's driver ends once
/// the server has closed it); returns the count it saw last.
async fn settle_to(count: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let started = Instant::now();
    while metrics.num_alive_tasks() > count && started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    metrics.num_alive_tasks()
}

#[tokio::test]
async fn no_task_outlives_its_app_or_its_worker() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let with_app = metrics.num_alive_tasks();
    // The server, the broker connection, the rollup, the purges, the caches' listeners, the
    // batch writers: an app runs many tasks, or this test would prove nothing.
    assert!(with_app >= before + 8, "only {with_app} tasks with the app running ({before} before)");
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    // One message end to end, so that every part has done its work at least once.
    let execution_id = execute(&app, &campaign, "owned", json!("482913")).await;
    wait_for_status(&app, &execution_id, "sent").await;
    assert_eq!(provider.calls().len(), 1);
    let with_both = metrics.num_alive_tasks();
    assert!(with_both > with_app, "the worker runs tasks of its own ({with_both} with it, {with_app} without)");

    // Dropped, not stopped: dropping is what a failing test does.
    drop(worker);
    // The worker's consumer connection closes before the app deletes the topology under it.
    // Dropped in the same instant, two tasks were measured to stay for 30 s, then end (2 alive
    // until t = 29 s, 0 at t = 30 s): the timing of a broker client's heartbeat tick, not a loop.
    settle_to(with_app).await;
    drop(app);
    let after = settle_to(before).await;
    assert_eq!(after, before, "tasks outlived the test app and its worker");
}
