//! Worker throughput against its baseline, in one process on one broker and database:
//!   - raw lapin consume-with-ack from a quorum queue, and
//!   - Herald's worker (delivery loop, campaign re-check, render, delivery claim and outcome in
//!     PostgreSQL, settle) sending to an in-process fake provider,
//!
//! over the same number of preloaded messages, with the ratio.
//! Run: `cargo bench -p herald-tests --bench worker` (`HERALD_BENCH_MESSAGES`, default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_core::Channel;
use herald_core::execution::{ENVELOPE_VERSION, Envelope, Recipient, RecipientType};
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, broker};
use herald_worker::providers::fake::ScriptedProvider;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use uuid::Uuid;

fn messages() -> usize {
    std::env::var("HERALD_BENCH_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)
}

/// Publishes `bodies` to `exchange`/`routing_key` with confirms, many in flight.
async fn preload(exchange: &str, routing_key: &str, bodies: Vec<(String, Vec<u8>)>) {
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for chunk in bodies.chunks(1_000) {
        let mut confirms = Vec::new();
        for (id, body) in chunk {
            let properties = BasicProperties::default().with_delivery_mode(2).with_message_id(id.clone().into());
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }
    let _ = connection.close(200, "preloaded".into()).await;
}

#[tokio::main]
async fn main() {
    let count = messages();
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign: Uuid = app.live_campaign(&otp_sms("bench")).await.parse().unwrap();
    let topology = app.topology().topology.clone();

    // Baseline: the same number of messages through a quorum queue of the same kind.
    let raw_queue = format!("{}.raw-baseline", topology.prefix);
    {
        let connection = broker::connect().await;
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(raw_queue.clone().into(), options, topology.channel_queue_arguments()).await.unwrap();
    }
    let payload = br#"{"version":1,"context":{"otp":"123456"}}"#.to_vec();
    preload("", &raw_queue, (0..count).map(|n| (format!("raw/{n}"), payload.clone())).collect()).await;
    let connection = broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(200, BasicQosOptions::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(raw_queue.clone().into(), "raw".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..count {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let raw_rate = count as f64 / started.elapsed().as_secs_f64();
    channel.queue_delete(raw_queue.into(), lapin::options::QueueDeleteOptions::default()).await.unwrap();
    let _ = connection.close(200, "done".into()).await;

    // Herald: envelopes as ingest publishes them, then the worker with a fake provider.
    let now = chrono::Utc::now();
    let bodies = (0..count)
        .map(|n| {
            let envelope = Envelope {
                version: ENVELOPE_VERSION,
                execution_id: Uuid::now_v7(),
                request_id: format!("bench-{n}"),
                campaign_id: campaign,
                sandbox: "a".into(),
                channel: Channel::Sms,
                recipient_index: 0,
                recipient: Recipient {
                    kind: RecipientType::External,
                    user_id: "+33612345678".into(),
                    namespace: "phone".into(),
                    channel_data: None,
                },
                context: serde_json::json!({"otp": format!("{n:06}")}).as_object().cloned().unwrap(),
                profile: serde_json::Map::new(),
                accepted_at: now,
                expires_at: None,
            };
            (envelope.message_id(), serde_json::to_vec(&envelope).unwrap())
        })
        .collect();
    preload(&topology.work_exchange(), "sms", bodies).await;
    let provider = Arc::new(ScriptedProvider::silent());
    let started = Instant::now();
    // The production defaults (HERALD_WORKER_CONCURRENCY, HERALD_WORKER_PREFETCH).
    let worker = TestWorker::start_with(&app, provider.clone(), fast_policy(), 64, 200).await;
    while (provider.call_count() as usize) < count {
        assert!(started.elapsed() < Duration::from_secs(600), "the worker stalled at {}", provider.call_count());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let herald_rate = count as f64 / started.elapsed().as_secs_f64();
    worker.stop().await;

    println!("worker benchmark ({count} messages, broker and database on this machine)");
    println!("{:<42} {:>12}", "raw lapin consume-with-ack msgs/s", format!("{raw_rate:.0}"));
    println!("{:<42} {:>12}", "herald worker msgs/s (records written)", format!("{herald_rate:.0}"));
    println!("{:<42} {:>12}", "ratio", format!("{:.2}", herald_rate / raw_rate));
}
