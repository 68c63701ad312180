//! Ingest throughput against its baseline, in one process on one broker:
//!   - raw lapin publish-with-confirm to a quorum queue (persistent, mandatory), and
//!   - `POST /im/executions/unitary` with one recipient, end to end (HTTP, validation, batched
//!     idempotency writes in PostgreSQL, confirmed publish),
//!
//! each at concurrency 1 and 64, with the ratio. Run: `cargo bench -p herald-tests --bench ingest`
//! (`HERALD_BENCH_SECONDS` sets the duration of each measurement, default 5).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_core::Channel;
use herald_ingest::ratelimit::Limits;
use herald_tests::fixtures::otp_sms;
use herald_tests::{TestApp, TestOptions, broker};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};
use serde_json::json;

fn seconds() -> Duration {
    Duration::from_secs_f64(std::env::var("HERALD_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0))
}

/// Runs `concurrency` loops of `one` for `duration`; returns completed operations per second.
async fn measure<F, Fut>(concurrency: usize, duration: Duration, one: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let one = Arc::new(one);
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (one, done, next, stop) = (Arc::clone(&one), Arc::clone(&done), Arc::clone(&next), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if one(next.fetch_add(1, Ordering::Relaxed)).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn purge(queue: &str) {
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel.queue_purge(queue.into(), QueuePurgeOptions::default()).await.unwrap();
    let _ = connection.close(200, "purged".into()).await;
}

#[tokio::main]
async fn main() {
    let duration = seconds();
    let app = Arc::new(TestApp::spawn_with(TestOptions { limits: Limits::none(), ..TestOptions::with_broker() }).await);
    let campaign = app.live_campaign(&otp_sms("bench")).await;
    let topology = app.topology().topology.clone();
    let queue = topology.queue_for(Channel::Sms, "a");

    // Baseline: the same kind of message, published straight to the same quorum queue.
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let payload = Arc::new(
        serde_json::to_vec(
            &json!({"version": 1, "recipient": {"userId": "+33612345678"}, "context": {"otp": "123456"}}),
        )
        .unwrap(),
    );
    let mut raw = Vec::new();
    for concurrency in [1, 64] {
        let (channel, exchange, payload) = (channel.clone(), topology.work_exchange(), Arc::clone(&payload));
        let routing_key = topology.routing_key_for(Channel::Sms, "a");
        let rate = measure(concurrency, duration, move |n| {
            let (channel, exchange, payload) = (channel.clone(), exchange.clone(), Arc::clone(&payload));
            let routing_key = routing_key.clone();
            async move {
                let properties =
                    BasicProperties::default().with_delivery_mode(2).with_message_id(format!("raw/{n}").into());
                let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
                match channel.basic_publish(exchange.into(), routing_key.into(), options, &payload, properties).await {
                    Ok(confirm) => confirm.await.is_ok_and(|c| c.is_ack() && c.take_message().is_none()),
                    Err(_) => false,
                }
            }
        })
        .await;
        purge(&queue).await;
        raw.push(rate);
    }

    let mut herald = Vec::new();
    for (round, concurrency) in [1usize, 64].into_iter().enumerate() {
        let (app, campaign) = (Arc::clone(&app), campaign.clone());
        let rate = measure(concurrency, duration, move |n| {
            let (app, campaign) = (Arc::clone(&app), campaign.clone());
            async move {
                let body = json!({
                    "requestId": format!("bench-{round}-{n}"),
                    "campaignId": campaign,
                    "recipients": [{"type": "external", "userId": "+33612345678", "context": {"otp": "123456"}}]
                });
                let response = app
                    .http
                    .post(format!("{}/im/executions/unitary", app.address))
                    .bearer_auth(&app.key)
                    .json(&body)
                    .send()
                    .await;
                response.is_ok_and(|r| r.status().as_u16() == 202)
            }
        })
        .await;
        purge(&queue).await;
        herald.push(rate);
    }

    println!("ingest benchmark ({}s per measurement, broker and database on this machine)", duration.as_secs_f64());
    println!("{:<14} {:>22} {:>26} {:>8}", "concurrency", "raw lapin confirms/s", "herald accepted req/s", "ratio");
    for (index, concurrency) in [1, 64].into_iter().enumerate() {
        println!(
            "{:<14} {:>22.0} {:>26.0} {:>8.2}",
            concurrency,
            raw[index],
            herald[index],
            herald[index] / raw[index]
        );
    }
    let _ = connection.close(200, "bench done".into()).await;
}
