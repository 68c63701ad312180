//! After the send, measured against baselines in the same run:
//!   - the suppression check on the send path: batches of delivery claims (256, as a busy worker
//!     writes them) with the check and without it, rounds interleaved, against a suppression list
//!     of `HERALD_BENCH_SUPPRESSIONS` (100,000) addresses; the check is inside the claim statement,
//!     so its cost is the difference in database time per claimed message;
//!   - feedback events recorded per second, in SQS-sized batches of 10 (each event: its identity,
//!     the delivery's feedback, a report count), and duplicates (a second copy of each).
//!
//! Run: `cargo bench -p herald-tests --bench feedback`.

use std::time::{Duration, Instant};

use herald_core::Channel;
use herald_core::feedback::parse_ses_event;
use herald_store::{ClaimRequest, DeliveryKey, SuppressionCheck};
use herald_tests::TestApp;
use herald_tests::fixtures::password_reset_email;
use uuid::Uuid;

const BATCH: usize = 256;
const ROUNDS: usize = 150;
const EVENTS: usize = 5_000;
const DELIVERY: &str = include_str!("../fixtures/ses/delivery.json");
const FIXTURE_MESSAGE_ID: &str = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000";

fn suppressions() -> i64 {
    std::env::var("HERALD_BENCH_SUPPRESSIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000)
}

fn claims(campaign: Uuid, check: Option<&str>) -> Vec<ClaimRequest> {
    let execution = Uuid::now_v7();
    (0..BATCH)
        .map(|i| ClaimRequest {
            key: DeliveryKey {
                execution_id: execution,
                recipient_index: i32::try_from(i).unwrap(),
                campaign_id: campaign,
                channel: Channel::Email,
            },
            version_id: None,
            token: Uuid::now_v7(),
            now: chrono::Utc::now(),
            accepted_at: chrono::Utc::now(),
            resend_abandoned: false,
            // Addresses that are not on the list (the usual case), but are looked up.
            suppression: check.map(|sandbox| SuppressionCheck {
                sandbox: sandbox.into(),
                address: format!("recipient-{i}-{execution}@example.com"),
                allow_complained: false,
            }),
        })
        .collect()
}

fn per_message(total: Duration, messages: usize) -> f64 {
    total.as_secs_f64() * 1e6 / messages as f64
}

#[tokio::main]
async fn main() {
    let app = TestApp::spawn().await;
    let campaign: Uuid = app.create_campaign(&password_reset_email("bench")).await.parse().unwrap();
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "INSERT INTO suppressions (sandbox, channel, address, reason, source, created_at, updated_at)
             SELECT 'a', 'email', 'suppressed-' || i || '@example.com', 'hard-bounce', 'bench', now(), now()
               FROM generate_series(1, $1::bigint) AS i",
            &[&suppressions()],
        )
        .await
        .unwrap();
    client.batch_execute("ANALYZE suppressions").await.unwrap();
    let store = app.store.clone();
    let stale = chrono::Duration::seconds(60);
    // Warm-up: plans, caches.
    for check in [None, Some("a")] {
        store.claim_deliveries(&claims(campaign, check), stale).await.unwrap();
    }
    let (mut without, mut with) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        for check in [None, Some("a")] {
            let batch = claims(campaign, check);
            let started = Instant::now();
            let outcomes = store.claim_deliveries(&batch, stale).await.unwrap();
            let took = started.elapsed();
            assert!(outcomes.iter().all(|o| matches!(o, herald_store::DeliveryClaim::Claimed { .. })));
            if check.is_some() { with += took } else { without += took }
        }
    }
    let messages = ROUNDS * BATCH;
    let (a, b) = (per_message(without, messages), per_message(with, messages));
    println!(
        "suppression check on the claim ({} suppressed addresses, batches of {BATCH}, {ROUNDS} rounds each):",
        suppressions()
    );
    println!("  claim without the check   {a:>7.2} µs per message");
    println!(
        "  claim with the check      {b:>7.2} µs per message   (+{:.2} µs, ×{:.3}); no extra round trip",
        b - a,
        b / a
    );
    // The alternative it avoids: a lookup of its own per message before the claim.
    let lookup = client
        .prepare("SELECT 1 FROM suppressions WHERE sandbox = $1 AND channel = 'email' AND address = $2")
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..BATCH * 10 {
        let address = format!("recipient-{i}@example.com");
        client.query_opt(&lookup, &[&"a", &address]).await.unwrap();
    }
    let own = per_message(started.elapsed(), BATCH * 10);
    println!("  a lookup of its own       {own:>7.2} µs per message (the round trip the claim saves)");

    // Feedback: EVENTS sent deliveries, one Delivery event each, recorded 10 at a time.
    client
        .execute(
            "INSERT INTO deliveries (execution_id, recipient_index, status, attempts, campaign_id, channel, provider_message_id,
                                     created_at, updated_at)
             SELECT gen_random_uuid(), 0, 'sent', 1, $1, 'email', 'bench-' || i, now(), now()
               FROM generate_series(1, $2::bigint) AS i",
            &[&campaign, &(EVENTS as i64)],
        )
        .await
        .unwrap();
    client.batch_execute("ANALYZE deliveries").await.unwrap();
    let events: Vec<_> = (1..=EVENTS)
        .map(|i| parse_ses_event(&DELIVERY.replace(FIXTURE_MESSAGE_ID, &format!("bench-{i}"))).unwrap().unwrap())
        .collect();
    let now = chrono::Utc::now();
    let started = Instant::now();
    for batch in events.chunks(10) {
        let outcomes = store.record_feedback(batch, now).await.unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, herald_store::FeedbackOutcome::Recorded { changed: true, .. })));
    }
    let recorded = started.elapsed();
    let started = Instant::now();
    for batch in events.chunks(10) {
        let outcomes = store.record_feedback(batch, now).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == herald_store::FeedbackOutcome::Duplicate));
    }
    let duplicates = started.elapsed();
    // As a worker records them with HERALD_FEEDBACK_SQS_POLLERS=4: four loops, four connections.
    client.execute("UPDATE deliveries SET feedback = NULL", &[]).await.unwrap();
    client.execute("DELETE FROM feedback_events", &[]).await.unwrap();
    let started = Instant::now();
    let mut pollers = tokio::task::JoinSet::new();
    for share in events.chunks(EVENTS.div_ceil(4)) {
        let (store, share) = (store.clone(), share.to_vec());
        pollers.spawn(async move {
            for batch in share.chunks(10) {
                store.record_feedback(batch, now).await.unwrap();
            }
        });
    }
    while pollers.join_next().await.is_some() {}
    let concurrent = started.elapsed();
    println!("feedback events ({EVENTS}, batches of 10):");
    println!("  recorded, one connection  {:>7.0} events/s", EVENTS as f64 / recorded.as_secs_f64());
    println!("  recorded, four pollers    {:>7.0} events/s", EVENTS as f64 / concurrent.as_secs_f64());
    println!("  duplicates (second copy)  {:>7.0} events/s", EVENTS as f64 / duplicates.as_secs_f64());
}
