//! Report latency over millions of delivery records, against a baseline in the same process:
//!   - the baseline computes the same numbers straight from the delivery records (counts by
//!     status and reason, retries, exact percentiles), with the index on (campaign, time);
//!   - Herald serves the reports over HTTP from the rollups its triggers kept while the records
//!     were written.
//!
//! Two reports: the live report of one campaign (1,000,000 deliveries in the last 23 hours, read
//! from the per-minute rollups) and the global report over 30 days (that campaign plus another
//! with 1,000,000 deliveries spread over the month, read from the hourly rollups).
//!
//! Records are written the way workers write them: inserted as `sending` claims, then given their
//! outcomes in one update, so the rollup triggers run as in production; then pending rows are
//! folded, as every Herald process does each second.
//! Run: `cargo bench -p herald-tests --bench report` (`HERALD_BENCH_DELIVERIES`, default 1000000
//! per campaign).

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use herald_tests::fixtures::otp_sms;
use herald_tests::{TestApp, TestOptions};
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

const RUNS: usize = 30;
const BASELINE_RUNS: usize = 5;

fn deliveries() -> i64 {
    std::env::var("HERALD_BENCH_DELIVERIES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000)
}

fn summarise(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    println!("  {label:<56} p50 {:>8.1} ms   p99 {:>8.1} ms", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
    p50
}

/// `n` deliveries of `campaign`, one per execution, claimed evenly over `minutes` minutes from
/// `start`; then outcomes: 90% sent (latency 50 ms to 5 s), 5% failed over three reasons, 3%
/// excluded, 1% unknown, 1% left retrying; every 10th needed a retry.
async fn seed(client: &tokio_postgres::Client, campaign: Uuid, start: DateTime<Utc>, minutes: i64, n: i64) {
    client
        .execute(
            "INSERT INTO deliveries (execution_id, recipient_index, status, attempts, campaign_id, channel, claim_token,
                                     claimed_at, created_at, updated_at, accepted_at)
             SELECT gen_random_uuid(), 0, 'sending', 0, $1, 'sms', gen_random_uuid(), t, t, t, t
               FROM (SELECT $2::timestamptz + (i % $4) * interval '1 minute' + (i % 60) * interval '1 second' AS t
                       FROM generate_series(1, $3::bigint) AS i) AS s",
            &[&campaign, &start, &n, &minutes],
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
               FROM (SELECT execution_id AS id, (hashtext(execution_id::text) & 1023) % 100 AS k
                       FROM deliveries WHERE campaign_id = $1) AS h
              WHERE deliveries.execution_id = h.id",
            &[&campaign],
        )
        .await
        .unwrap();
}

/// The same numbers straight from the records; returns the sent count.
async fn baseline(client: &tokio_postgres::Client, campaigns: &[Uuid], from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    let counts = client
        .query(
            "SELECT status, reason, count(*), sum(greatest(attempts - 1, 0)) FROM deliveries
              WHERE campaign_id = ANY($1) AND updated_at >= $2 AND updated_at < $3 GROUP BY 1, 2",
            &[&campaigns, &from, &to],
        )
        .await
        .unwrap();
    client
        .query_one(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY updated_at - accepted_at)
               FROM deliveries WHERE campaign_id = ANY($1) AND updated_at >= $2 AND updated_at < $3 AND status = 'sent'",
            &[&campaigns, &from, &to],
        )
        .await
        .unwrap();
    counts.iter().filter(|row| row.get::<_, String>(0) == "sent").map(|row| row.get::<_, i64>(2)).sum()
}

async fn served(app: &TestApp, path: &str) -> (Duration, Value) {
    let began = Instant::now();
    let reply = app.get(path).await;
    let took = began.elapsed();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    (took, reply.body)
}

fn sent(report: &Value) -> i64 {
    report["channels"].as_array().unwrap().iter().map(|c| c["sent"].as_i64().unwrap()).sum()
}

#[tokio::main]
async fn main() {
    let app = TestApp::spawn_with(TestOptions::default()).await;
    let live: Uuid = app.live_campaign(&otp_sms("otp")).await.parse().unwrap();
    let monthly: Uuid = app.live_campaign(&otp_sms("otp monthly")).await.parse().unwrap();
    let n = deliveries();
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let now = Utc::now();
    let day_start = now.duration_trunc(chrono::Duration::minutes(1)).unwrap() - chrono::Duration::hours(23);
    let month_start = now.duration_trunc(chrono::Duration::hours(1)).unwrap() - chrono::Duration::days(29);

    let seeding = Instant::now();
    seed(&client, live, day_start, 23 * 60, n).await;
    seed(&client, monthly, month_start, 29 * 24 * 60, n).await;
    let folded = app.store.roll_up_reports().await.unwrap();
    for table in ["deliveries", "report_counts", "report_counts_hourly", "report_latency", "report_latency_hourly"] {
        client.execute(&format!("ANALYZE {table}"), &[]).await.unwrap();
    }
    let rows = |table: &'static str| {
        let client = &client;
        async move { client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get::<_, i64>(0) }
    };
    println!(
        "seeded {} delivery records in {:.1} s; {folded} pending rows folded into {} minute and {} hourly count rollups",
        2 * n,
        seeding.elapsed().as_secs_f64(),
        rows("report_counts").await,
        rows("report_counts_hourly").await,
    );

    // The live report: one campaign, the last 24 hours.
    let (from, to) = (now - chrono::Duration::hours(24), now + chrono::Duration::minutes(1));
    let mut base = Vec::new();
    let mut direct = 0;
    for _ in 0..BASELINE_RUNS {
        let began = Instant::now();
        direct = baseline(&client, &[live], from, to).await;
        base.push(began.elapsed());
    }
    let mut herald = Vec::new();
    let mut answer = Value::Null;
    for _ in 0..RUNS {
        let (took, body) = served(&app, &format!("/campaigns/{live}/report")).await;
        herald.push(took);
        answer = body;
    }
    assert_eq!(sent(&answer), direct, "the rollups and the records agree on what was sent");
    println!("live report, one campaign, {n} deliveries in the last 24 h:");
    let b = summarise("baseline: SQL over the delivery records (no HTTP)", base);
    let h = summarise("Herald: GET /campaigns/{id}/report (minute rollups)", herald);
    println!("  ratio baseline/Herald (p50): {:.1}x faster", b.as_secs_f64() / h.as_secs_f64());

    // The global report: every campaign, 30 days.
    let (from, to) = (now - chrono::Duration::days(30), now + chrono::Duration::hours(1));
    let mut base = Vec::new();
    for _ in 0..BASELINE_RUNS {
        let began = Instant::now();
        direct = baseline(&client, &[live, monthly], from, to).await;
        base.push(began.elapsed());
    }
    let stamp = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let path = format!("/reports?from={}&to={}", stamp(from), stamp(to));
    let mut herald = Vec::new();
    for _ in 0..RUNS {
        let (took, body) = served(&app, &path).await;
        herald.push(took);
        answer = body;
    }
    assert_eq!(sent(&answer), direct, "the hourly rollups and the records agree on what was sent");
    println!("global report, 30 days, {} deliveries over two campaigns:", 2 * n);
    let b = summarise("baseline: SQL over the delivery records (no HTTP)", base);
    let h = summarise("Herald: GET /reports (hourly rollups)", herald);
    println!("  ratio baseline/Herald (p50): {:.1}x faster", b.as_secs_f64() / h.as_secs_f64());
}
