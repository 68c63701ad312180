//! Reports against a hand-computed mix of outcomes, written through the store's own write paths
//! (so the rollup triggers see exactly what workers and the API write), and one end to end.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use herald_core::Channel;
use herald_core::delivery::{DeliveryStatus, ErrorClass, ProviderError};
use herald_store::{ClaimRequest, DeliveryClaim, DeliveryKey, ExecutionClaim, Finish, NewDeadLetter, Store};
use herald_tests::fixtures::{otp_sms, password_reset_email};
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// One accepted execution of `recipients` recipients, accepted at `at`.
async fn accept(store: &Store, campaign: Uuid, recipients: usize, at: DateTime<Utc>) -> Uuid {
    let execution_id = Uuid::now_v7();
    let summary: Vec<Value> = (0..recipients).map(|i| json!({"userId": format!("u{i}")})).collect();
    store
        .claim_executions(&[ExecutionClaim {
            sandbox: "a".into(),
            campaign_id: campaign,
            request_id: execution_id.to_string(),
            body_hash: vec![0; 32],
            execution_id,
            recipients: Value::Array(summary),
            now: at,
            lease_until: at + chrono::Duration::seconds(30),
        }])
        .await
        .unwrap();
    store.complete_executions(&[execution_id], at).await.unwrap();
    execution_id
}

struct Seeder<'a> {
    store: &'a Store,
    campaign: Uuid,
    channel: Channel,
    execution: Uuid,
    accepted: DateTime<Utc>,
}

impl Seeder<'_> {
    fn key(&self, index: i32) -> DeliveryKey {
        DeliveryKey {
            execution_id: self.execution,
            recipient_index: index,
            campaign_id: self.campaign,
            channel: self.channel,
        }
    }

    async fn claim(&self, index: i32, now: DateTime<Utc>) -> Uuid {
        let token = Uuid::now_v7();
        let request = ClaimRequest {
            key: self.key(index),
            version_id: None,
            token,
            now,
            accepted_at: self.accepted,
            resend_abandoned: false,
            suppression: None,
        };
        let claims = self.store.claim_deliveries(&[request], chrono::Duration::seconds(60)).await.unwrap();
        assert!(matches!(claims[0], DeliveryClaim::Claimed { .. }), "{claims:?}");
        token
    }

    /// One claim and its outcome after `calls` provider calls, at `now`.
    async fn outcome(&self, index: i32, status: DeliveryStatus, reason: Option<&str>, calls: i32, now: DateTime<Utc>) {
        let token = self.claim(index, now).await;
        let finish = Finish {
            key: self.key(index),
            token,
            status,
            reason: reason.map(str::to_string),
            provider_message_id: None,
            calls,
            last_error: None,
            retry_after: (status == DeliveryStatus::Retrying).then_some(Duration::ZERO),
            now,
        };
        assert_eq!(self.store.finish_deliveries(&[finish]).await.unwrap(), vec![true]);
    }
}

fn ms(milliseconds: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(milliseconds)
}

#[tokio::test]
async fn a_report_matches_a_hand_computed_mix_of_outcomes() {
    let app = TestApp::spawn().await;
    let sms: Uuid = app.live_campaign(&otp_sms("otp")).await.parse().unwrap();
    let email: Uuid = app.live_campaign(&password_reset_email("reset")).await.parse().unwrap();
    let store = &app.store;
    let base = Utc::now().duration_trunc(chrono::Duration::hours(1)).unwrap() - chrono::Duration::hours(2);

    // Ten recipients accepted at `base`.
    let execution = accept(store, sms, 10, base).await;
    let seed = Seeder { store, campaign: sms, channel: Channel::Sms, execution, accepted: base };
    // Six sent at once, with accept→sent latencies of 100 ms ×3, 1 s ×2 and 10 s.
    for (index, latency) in [(0, 100), (1, 100), (2, 100), (3, 1_000), (4, 1_000), (5, 10_000)] {
        seed.outcome(index, DeliveryStatus::Sent, None, 1, base + ms(latency)).await;
    }
    // Throttled twice (one retry in process), parked in a tier, then sent on the next claim: 2 retries.
    seed.outcome(6, DeliveryStatus::Retrying, Some("Throttling"), 2, base + ms(60_000)).await;
    seed.outcome(6, DeliveryStatus::Sent, None, 1, base + ms(120_000)).await;
    seed.outcome(7, DeliveryStatus::Failed, Some("InvalidParameter"), 1, base + ms(500)).await;
    // Three calls, all transient: failed, 2 retries, and dead-lettered.
    seed.outcome(8, DeliveryStatus::Failed, Some("max-attempts"), 3, base + ms(3_000)).await;
    let letter = NewDeadLetter {
        message_id: format!("{execution}/8"),
        sandbox: Some("a".into()),
        campaign_id: Some(sms),
        execution_id: Some(execution),
        recipient_index: Some(8),
        channel: "sms".into(),
        reason: "max-attempts".into(),
        last_error: Some("throttled".into()),
        body: b"{}".to_vec(),
    };
    store.record_dead_letter(&letter, base + ms(3_000)).await.unwrap();
    // Recorded twice (a redelivered copy): counted once.
    store.record_dead_letter(&letter, base + ms(3_500)).await.unwrap();
    store
        .record_delivery(&seed.key(9), None, DeliveryStatus::Excluded, ("campaign-not-live", None), base + ms(200))
        .await
        .unwrap();
    // One more recipient whose worker died during the call: unknown (maybe sent).
    let crashed = accept(store, sms, 1, base).await;
    let crashed = Seeder { store, campaign: sms, channel: Channel::Sms, execution: crashed, accepted: base };
    let token = crashed.claim(0, base).await;
    let started = herald_store::CallStart { key: crashed.key(0), token, now: base };
    assert_eq!(store.mark_calls_started(&[started]).await.unwrap(), vec![true]);
    let late = base + chrono::Duration::minutes(5);
    let request = ClaimRequest {
        key: crashed.key(0),
        version_id: None,
        token: Uuid::now_v7(),
        now: late,
        accepted_at: base,
        resend_abandoned: false,
        suppression: None,
    };
    assert_eq!(
        store.claim_deliveries(&[request], chrono::Duration::seconds(60)).await.unwrap(),
        vec![DeliveryClaim::Abandoned]
    );
    // Outside the one-hour windows below: three hours before `base`.
    let early = base - chrono::Duration::hours(3);
    let old = accept(store, sms, 1, early).await;
    Seeder { store, campaign: sms, channel: Channel::Sms, execution: old, accepted: early }
        .outcome(0, DeliveryStatus::Sent, None, 1, early + ms(50))
        .await;
    // Another campaign, on another channel.
    let other = accept(store, email, 1, base).await;
    Seeder { store, campaign: email, channel: Channel::Email, execution: other, accepted: base }
        .outcome(0, DeliveryStatus::Sent, None, 1, base + ms(2_000))
        .await;

    let from = (base - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (base + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reply = app.get(&format!("/campaigns/{sms}/report?from={from}&to={to}&bucketSeconds=3600")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let report = &reply.body["channels"][0];
    assert_eq!(reply.body["channels"].as_array().unwrap().len(), 1);
    assert_eq!(report["channel"], "sms");
    assert_eq!(report["targeted"], 11);
    assert_eq!(report["sent"], 7);
    assert_eq!(report["failed"], json!({"total": 2, "byReason": {"InvalidParameter": 1, "max-attempts": 1}}));
    assert_eq!(report["excluded"], json!({"total": 1, "byReason": {"campaign-not-live": 1}}));
    assert_eq!(report["deadLettered"], json!({"total": 1, "byReason": {"max-attempts": 1}}));
    assert_eq!(report["unknown"], 1);
    assert_eq!(report["retries"], 4);
    // Sorted latencies: 0.1, 0.1, 0.1, 1, 1, 10, 120 s. Nearest rank: p50 = 4th, p95 = p99 = 7th.
    let latency = &report["latencyMs"];
    assert_eq!(latency["count"], 7);
    let within = |value: &Value, exact: f64| {
        let value = value.as_f64().unwrap_or_else(|| panic!("{latency}"));
        assert!((exact..=exact * 1.1).contains(&value), "{value} not within 10% above {exact}: {latency}");
    };
    within(&latency["p50"], 1_000.0);
    within(&latency["p95"], 120_000.0);
    within(&latency["p99"], 120_000.0);
    // Two buckets: the hour before `base` is empty, the hour from `base` holds everything.
    let series = report["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!((series[0]["targeted"].as_i64(), series[0]["sent"].as_i64()), (Some(0), Some(0)));
    assert_eq!(
        (&series[1]["targeted"], &series[1]["sent"], &series[1]["failed"], &series[1]["retries"]),
        (&json!(11), &json!(7), &json!(2), &json!(4))
    );

    // Every event the enum has was written by the triggers above, and nothing else: a new figure
    // needs both (see ARCHITECTURE.md, "Where new things go").
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let written: std::collections::BTreeSet<String> = client
        .query("SELECT DISTINCT event FROM report_pending", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known: std::collections::BTreeSet<String> = herald_core::report::ReportEvent::ALL
        .iter()
        .filter(|event| !event.is_feedback())
        .map(|event| event.as_str().to_string())
        .collect();
    assert_eq!(written, known, "the events the report triggers write");

    // Folding the pending outcomes into the rollups (each process does it every second) changes nothing.
    assert!(store.roll_up_reports().await.unwrap() > 0);
    let again = app.get(&format!("/campaigns/{sms}/report?from={from}&to={to}&bucketSeconds=3600")).await;
    assert_eq!(again.body, reply.body);

    // The live report (the last 24 hours, for a campaign older than that) also sees the send from
    // three hours before. (The sends here are back-dated; the campaign is made older to match.)
    client
        .execute("UPDATE campaigns SET created_at = now() - interval '30 hours' WHERE id = $1", &[&sms])
        .await
        .unwrap();
    let live = app.get(&format!("/campaigns/{sms}/report")).await;
    assert_eq!(live.body["channels"][0]["sent"], 8, "{}", live.body);
    assert_eq!(live.body["channels"][0]["targeted"], 12);
    assert_eq!(live.body["bucketSeconds"], 900);

    // The global report: every channel, and a line per campaign.
    let global = app.get(&format!("/reports?from={from}&to={to}")).await;
    assert_eq!(global.status, StatusCode::OK, "{}", global.body);
    let channels: Vec<(&str, i64)> = global.body["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["channel"].as_str().unwrap(), c["sent"].as_i64().unwrap()))
        .collect();
    assert_eq!(channels, vec![("email", 1), ("sms", 7), ("push", 0)]);
    let campaigns = global.body["campaigns"].as_array().unwrap();
    assert_eq!(campaigns.len(), 2);
    let line = campaigns.iter().find(|c| c["campaignId"] == sms.to_string()).unwrap();
    assert_eq!((&line["targeted"], &line["sent"], &line["deadLettered"]), (&json!(11), &json!(7), &json!(1)));

    // Another sandbox sees none of it.
    let stranger = app.key_for("b", &herald_core::Scope::ALL).await;
    let other = app.call(reqwest::Method::GET, &format!("/reports?from={from}&to={to}"), Some(&stranger), None).await;
    assert_eq!(other.body["campaigns"], json!([]));
    let hidden = app.call(reqwest::Method::GET, &format!("/campaigns/{sms}/report"), Some(&stranger), None).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);

    // A three-day window is read from the hourly rollups, plus what is still pending: one more
    // send written after the fold.
    let late = accept(store, sms, 1, base + chrono::Duration::minutes(30)).await;
    Seeder {
        store,
        campaign: sms,
        channel: Channel::Sms,
        execution: late,
        accepted: base + chrono::Duration::minutes(30),
    }
    .outcome(0, DeliveryStatus::Sent, None, 1, base + chrono::Duration::minutes(31))
    .await;
    let days = |offset: i64| (base + chrono::Duration::days(offset)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let long = app.get(&format!("/campaigns/{sms}/report?from={}&to={}&bucketSeconds=86400", days(-2), days(1))).await;
    assert_eq!(long.status, StatusCode::OK, "{}", long.body);
    let sms_long = &long.body["channels"][0];
    assert_eq!((&sms_long["targeted"], &sms_long["sent"], &sms_long["retries"]), (&json!(13), &json!(9), &json!(4)));
    assert_eq!(
        (&sms_long["failed"]["total"], &sms_long["unknown"], &sms_long["latencyMs"]["count"]),
        (&json!(2), &json!(1), &json!(9))
    );
    let series = sms_long["series"].as_array().unwrap();
    assert_eq!(series.len(), 3);
    assert_eq!((&series[0]["sent"], &series[1]["sent"], &series[2]["sent"]), (&json!(0), &json!(1), &json!(8)));
    // Folded or not, the same answer.
    store.roll_up_reports().await.unwrap();
    let folded =
        app.get(&format!("/campaigns/{sms}/report?from={}&to={}&bucketSeconds=86400", days(-2), days(1))).await;
    assert_eq!(folded.body, long.body);
}

#[tokio::test]
async fn report_windows_are_validated() {
    let app = TestApp::spawn().await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    for query in [
        "from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
        "from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "bucketSeconds=30",
        "from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&bucketSeconds=60",
    ] {
        let reply = app.get(&format!("/campaigns/{campaign}/report?{query}")).await;
        reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
        assert!(reply.body["errors"][0]["detail"].is_string(), "{}", reply.body);
    }
    app.get(&format!("/campaigns/{campaign}/report?from=yesterday"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "validation");
    app.get("/reports?colour=blue").await.assert_problem(StatusCode::BAD_REQUEST, "validation");
}

#[tokio::test]
async fn a_report_counts_what_a_worker_did_end_to_end_and_renders_as_a_page() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let provider = Arc::new(ScriptedProvider::new());
    provider.script([Err(ProviderError::new(ErrorClass::Transient, "Throttling", "slow down"))]);
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let body = execution(
        "e2e",
        &campaign,
        &[("+33612345678", json!({"otp": "1234"})), ("+33612345679", json!({"otp": "5678"}))],
    );
    assert_eq!(app.post("/im/executions/unitary", &body).await.status, StatusCode::ACCEPTED);
    let started = std::time::Instant::now();
    let report = loop {
        let reply = app.get(&format!("/campaigns/{campaign}/report")).await;
        if reply.body["channels"][0]["sent"] == 2 {
            break reply.body;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    worker.stop().await;
    let sms = &report["channels"][0];
    assert_eq!((&sms["targeted"], &sms["retries"], &sms["latencyMs"]["count"]), (&json!(2), &json!(1), &json!(2)));
    assert!(sms["latencyMs"]["p99"].as_f64().unwrap() > 0.0);

    let page = app
        .http
        .get(format!("{}/campaigns/{campaign}/report.html", app.address))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.contains("<svg id=\"chart\"") && html.contains("fill=\"#2e7d32\""), "no sent bar in {html}");
    assert!(!html.contains("+3361234567"), "the page shows no address");
    assert!(html.contains("<strong id=\"status\">live</strong>"), "the page shows the campaign's status");
    // The page links to other windows (the last hour, day, week, month); each answers and holds
    // the sends of a moment ago.
    let windows: Vec<String> = html
        .split("href=\"")
        .filter_map(|rest| rest.split('"').next())
        .filter(|href| href.starts_with("report.html?from="))
        .map(|href| href.replace("&amp;", "&"))
        .collect();
    assert_eq!(windows.len(), 4, "{windows:?}");
    for window in &windows {
        let linked = app.get(&format!("/campaigns/{campaign}/{}", window.replace("report.html", "report"))).await;
        assert_eq!(linked.status, StatusCode::OK, "{}", linked.body);
        assert_eq!(linked.body["channels"][0]["sent"], 2, "{window} includes the sends");
    }
}

#[tokio::test]
async fn a_new_campaigns_report_spans_its_life_so_far_not_a_whole_day() {
    let app = TestApp::spawn().await;
    let campaign = app.live_campaign(&otp_sms("fresh")).await;
    let report = app.get(&format!("/campaigns/{campaign}/report")).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    assert_eq!(report.body["status"], "live");
    let at = |field: &str| report.body[field].as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    let span = at("to") - at("from");
    // At least the last hour (minute-aligned), not 24 hours with the sends in the last bar.
    assert!(span >= chrono::Duration::hours(1) && span <= chrono::Duration::minutes(62), "{span}");
    assert_eq!(report.body["bucketSeconds"], 60, "{}", report.body);
    // An older campaign gets the last 24 hours; an explicit window is kept as asked.
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let id: Uuid = campaign.parse().unwrap();
    client.execute("UPDATE campaigns SET created_at = now() - interval '5 hours' WHERE id = $1", &[&id]).await.unwrap();
    let older = app.get(&format!("/campaigns/{campaign}/report")).await;
    let span = older.body["to"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap()
        - older.body["from"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    assert!(span >= chrono::Duration::hours(5) && span <= chrono::Duration::minutes(302), "{span}");
}

#[tokio::test]
async fn a_replayed_message_dead_lettered_again_counts_again_and_a_duplicate_copy_does_not() {
    let app = TestApp::spawn().await;
    let sms: Uuid = app.live_campaign(&otp_sms("otp")).await.parse().unwrap();
    let store = &app.store;
    let now = Utc::now();
    let execution = accept(store, sms, 1, now).await;
    let letter = NewDeadLetter {
        message_id: format!("{execution}/0"),
        sandbox: Some("a".into()),
        campaign_id: Some(sms),
        execution_id: Some(execution),
        recipient_index: Some(0),
        channel: "sms".into(),
        reason: "max-attempts".into(),
        last_error: None,
        body: b"{}".to_vec(),
    };
    store.record_dead_letter(&letter, now).await.unwrap();
    store.record_dead_letter(&letter, now + ms(10)).await.unwrap();
    let dead_lettered = || async {
        app.get(&format!("/campaigns/{sms}/report")).await.body["channels"][0]["deadLettered"]["total"].clone()
    };
    assert_eq!(dead_lettered().await, 1, "a duplicate copy counts once");
    let id = store.list_dead_letters(Some("a"), None, None, 10).await.unwrap()[0].id;
    store.begin_replay(Some("a"), id, now + ms(20)).await.unwrap().expect("replayable");
    assert_eq!(dead_lettered().await, 1, "a replay is not a dead letter");
    // The replayed message fails again and comes back.
    store.record_dead_letter(&letter, now + ms(30)).await.unwrap();
    assert_eq!(dead_lettered().await, 2);
    store.record_dead_letter(&letter, now + ms(40)).await.unwrap();
    assert_eq!(dead_lettered().await, 2, "and its duplicate copy counts nothing");
}
