//! Report latency over 1,000,000 delivery records, against its baseline in the same process:
//!   - the baseline computes the same numbers straight from the delivery records (counts by
//!     status and reason, retries, exact percentiles), indexed by campaign;
//!   - Herald serves `GET /campaigns/{id}/report` (the live report, last 24 hours) from the
//!     rollups its triggers kept while the records were written.
//!
//! The records are written the way workers write them: inserted as `sending` claims, then given
//! their outcomes in one update, so the rollup triggers run as they do in production.
//! Run: `cargo bench -p herald-tests --bench report` (`HERALD_BENCH_DELIVERIES`, default 1000000).

use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use herald_tests::fixtures::otp_sms;
use herald_tests::{TestApp, TestOptions};
use reqwest::StatusCode;
use uuid::Uuid;

const RUNS: usize = 30;

fn deliveries() -> i64 {
    std::env::var("HERALD_BENCH_DELIVERIES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000)
}

fn summarise(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    println!("{label:<58} p50 {:>8.1} ms   p99 {:>8.1} ms", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
    p50
}

#[tokio::main]
async fn main() {
    let app = TestApp::spawn_with(TestOptions::default()).await;
    let campaign: Uuid = app.live_campaign(&otp_sms("otp")).await.parse().unwrap();
    let n = deliveries();
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let start = Utc::now().duration_trunc(chrono::Duration::minutes(1)).unwrap() - chrono::Duration::hours(23);

    let seeding = Instant::now();
    // Claims spread over 23 hours, then outcomes: 90% sent (latency 50 ms to 5 s), 5% failed
    // over three reasons, 3% excluded, 1% unknown, 1% left retrying; every 10th needed a retry.
    client
        .execute(
            "INSERT INTO deliveries (execution_id, recipient_index, status, attempts, campaign_id, channel, claim_token,
                                     claimed_at, created_at, updated_at, accepted_at)
             SELECT gen_random_uuid(), 0, 'sending', 0, $1, 'sms', gen_random_uuid(), t, t, t, t
               FROM (SELECT $2::timestamptz + (i % 1380) * interval '1 minute' + (i % 60) * interval '1 second' AS t
                       FROM generate_series(1, $3::bigint) AS i) AS s",
            &[&campaign, &start, &n],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE deliveries SET
                 status = CASE WHEN k < 90 THEN 'sent' WHEN k < 95 THEN 'failed' WHEN k < 98 THEN 'excluded'
                               WHEN k < 99 THEN 'unknown' ELSE 'retrying' END,
                 reason = CASE WHEN k < 90 THEN NULL WHEN k < 95 THEN (ARRAY['InvalidParameter', 'OptedOut', 'max-attempts'])[k % 3 + 1]
                               WHEN k < 98 THEN 'campaign-not-live' WHEN k < 99 THEN 'worker-died-during-send' ELSE 'Throttling' END,
                 attempts = CASE WHEN k % 10 = 0 THEN 2 ELSE 1 END,
                 updated_at = accepted_at + (50 + (k * 37) % 4950) * interval '1 millisecond'
               FROM (SELECT execution_id AS id, (hashtext(execution_id::text) & 1023) % 100 AS k FROM deliveries) AS h
              WHERE deliveries.execution_id = h.id",
            &[],
        )
        .await
        .unwrap();
    // What every Herald process does each second: fold pending outcomes into the rollups.
    let folded = app.store.roll_up_reports().await.unwrap();
    client.execute("ANALYZE deliveries", &[]).await.unwrap();
    client.execute("ANALYZE report_counts", &[]).await.unwrap();
    let rollup_rows: i64 = client.query_one("SELECT count(*) FROM report_counts", &[]).await.unwrap().get(0);
    println!(
        "seeded {n} delivery records in {:.1} s ({folded} pending rows folded into {rollup_rows} rollup rows)",
        seeding.elapsed().as_secs_f64()
    );

    // Baseline: the same report straight from the records, with an index on (campaign_id, updated_at).
    let from = start - chrono::Duration::hours(1);
    let to = Utc::now();
    let mut baseline = Vec::new();
    let mut direct_sent = 0;
    for _ in 0..RUNS.min(5) {
        let began = Instant::now();
        let counts = client
            .query(
                "SELECT status, reason, count(*), sum(greatest(attempts - 1, 0)) FROM deliveries
                  WHERE campaign_id = $1 AND updated_at >= $2 AND updated_at < $3 GROUP BY 1, 2",
                &[&campaign, &from, &to],
            )
            .await
            .unwrap();
        let latency = client
            .query_one(
                "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY updated_at - accepted_at)
                   FROM deliveries WHERE campaign_id = $1 AND updated_at >= $2 AND updated_at < $3 AND status = 'sent'",
                &[&campaign, &from, &to],
            )
            .await
            .unwrap();
        baseline.push(began.elapsed());
        direct_sent =
            counts.iter().filter(|row| row.get::<_, String>(0) == "sent").map(|row| row.get::<_, i64>(2)).sum();
        drop(latency);
    }

    let mut herald = Vec::new();
    let mut served_sent = 0;
    for _ in 0..RUNS {
        let began = Instant::now();
        let reply = app.get(&format!("/campaigns/{campaign}/report")).await;
        herald.push(began.elapsed());
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        served_sent = reply.body["channels"][0]["sent"].as_i64().unwrap();
    }
    assert_eq!(served_sent, direct_sent, "the rollups and the records agree on what was sent");

    println!("report over {n} deliveries (live report, last 24 h, {RUNS} runs):");
    let base = summarise("baseline: SQL over the delivery records (no HTTP)", baseline);
    let served = summarise("Herald: GET /campaigns/{id}/report over HTTP (rollups)", herald);
    println!("ratio baseline/Herald (p50): {:.1}x faster", base.as_secs_f64() / served.as_secs_f64());
}
