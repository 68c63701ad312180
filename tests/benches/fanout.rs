//! The audience fan-out at size: `cargo bench -p herald-tests --bench fanout`.
//!
//! Release `herald api` and `herald worker` processes (built now unless `HERALD_BIN` names a
//! binary) on a database and queue prefix of their own, and the fake SNS.
//! 1. Publishing alone: a list of `HERALD_FANOUT_PUBLISH` members (200,000) fanned out with no
//!    worker running and the queue limit lifted: members published per second.
//! 2. The whole path: `HERALD_FANOUT_PROFILES` profiles (1,000,000) seeded in bulk, one in a
//!    hundred without a phone number; a filter audience over all of them; one audience execution
//!    sent by one worker to the fake provider. The counts must be exact: targeted = profiles,
//!    each phone number called once, the others excluded `no-address`.
//!
//! Results are printed and written to `target/fanout/results.json`.

#[path = "../fanout/fake_sns.rs"]
mod fake_sns;
#[path = "../fanout/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{Stack, until};
use reqwest::Method;
use serde_json::json;

fn count(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A release build of the workspace's herald (built now if out of date), unless `HERALD_BIN`
/// names one.
fn release_binary() -> Option<std::path::PathBuf> {
    if std::env::var("HERALD_BIN").is_ok() {
        return None;
    }
    let built = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "herald", "--locked"])
        .status()
        .expect("run cargo build");
    assert!(built.success(), "cargo build --release -p herald failed");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), std::path::PathBuf::from);
    Some(target.join("release/herald"))
}

async fn wait_status(stack: &Stack, api: &harness::Herald, execution: &str, within: Duration) -> serde_json::Value {
    let path = format!("/im/executions/audience/{execution}");
    let started = Instant::now();
    loop {
        let status = stack.call(api, Method::GET, &path, None, 200).await;
        if status["status"] != "InProgress" {
            return status;
        }
        assert!(started.elapsed() < within, "the fan-out did not end within {within:?}: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn publishing_alone(members: i64) -> serde_json::Value {
    let stack = Stack::new("publish", &[("HERALD_FANOUT_QUEUE_LIMIT", "100000000")]).await;
    let api = stack.api("api").await;
    let campaign = stack.campaign(&api, None).await;
    let numbers = harness::numbers("+3365", usize::try_from(members).unwrap());
    let audience = stack.list(&api, "publish", &numbers).await;
    let started = Instant::now();
    let body =
        json!({"requestId": "publish", "campaignId": campaign, "audience": {"id": audience}, "context": {"otp": "1"}});
    let accepted = stack.call(&api, Method::POST, "/im/executions/audience", Some(body), 202).await;
    let execution = accepted["executionId"].as_str().unwrap();
    let status = wait_status(&stack, &api, execution, Duration::from_secs(600)).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(status["progress"]["published"], members, "{status}");
    let queued = stack.queued().await;
    assert_eq!(i64::from(queued), members, "every published member is in the broker");
    json!({"members": members, "seconds": seconds, "publishedPerSec": members as f64 / seconds})
}

async fn whole_path(profiles: i64) -> serde_json::Value {
    let stack = Stack::new("million", &[]).await;
    let api = stack.api("api").await;
    let _worker = stack.worker("worker").await;
    let client = stack.sql().await;
    let seeding = Instant::now();
    client
        .execute(
            "INSERT INTO profiles (sandbox, namespace, user_id, attributes, phone_number, created_at, updated_at) \
             SELECT 'default', 'crm', 'u' || i, jsonb_build_object('n', i), \
                    CASE WHEN i % 100 = 0 THEN NULL ELSE '+336' || lpad(i::text, 8, '0') END, now(), now() \
               FROM generate_series(1, $1::bigint) i",
            &[&profiles],
        )
        .await
        .unwrap();
    let seeded = seeding.elapsed().as_secs_f64();
    let campaign = stack.campaign(&api, None).await;
    let computing = Instant::now();
    let filter = json!({"field": "namespace", "op": "eq", "value": "crm"});
    let audience =
        stack.call(&api, Method::POST, "/audiences", Some(json!({"name": "all", "filter": filter})), 201).await;
    let computed = computing.elapsed().as_secs_f64();
    assert_eq!(audience["size"], profiles);
    let started = Instant::now();
    let body = json!({"requestId": "million", "campaignId": campaign, "audience": {"id": audience["id"]}, "context": {"otp": "1"}});
    let accepted = stack.call(&api, Method::POST, "/im/executions/audience", Some(body), 202).await;
    let execution = accepted["executionId"].as_str().unwrap().to_string();
    let status = wait_status(&stack, &api, &execution, Duration::from_secs(3600)).await;
    let published_in = started.elapsed().as_secs_f64();
    let reachable = profiles - profiles / 100;
    until(Duration::from_secs(1800), "every reachable member sent", async || stack.fake.total() >= reachable as usize)
        .await;
    let total = started.elapsed().as_secs_f64();
    let done = loop {
        let status = stack.call(&api, Method::GET, &format!("/im/executions/audience/{execution}"), None, 200).await;
        if status["progress"]["pending"] == 0
            && status["progress"]["sent"].as_i64().unwrap() + status["progress"]["excluded"].as_i64().unwrap()
                == profiles
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = stack.fake.per_number();
    let duplicated = calls.values().filter(|n| **n > 1).count();
    assert_eq!((calls.len() as i64, duplicated), (reachable, 0), "each reachable member once");
    assert_eq!(status["status"], "Succeeded");
    assert_eq!(done["targetedProfileCount"], profiles);
    assert_eq!(done["progress"]["sent"], reachable);
    assert_eq!(done["progress"]["excluded"], profiles / 100);
    let reasons = client
        .query("SELECT reason, count(*) FROM deliveries WHERE status = 'excluded' GROUP BY reason", &[])
        .await
        .unwrap();
    let reasons: Vec<(String, i64)> = reasons.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(reasons, [("no-address".to_string(), profiles / 100)]);
    json!({
        "profiles": profiles,
        "seedSeconds": seeded,
        "audienceComputeSeconds": computed,
        "publishedSeconds": published_in,
        "publishedPerSec": profiles as f64 / published_in,
        "totalSeconds": total,
        "sentPerSec": reachable as f64 / total,
        "sent": reachable,
        "excluded": profiles / 100,
    })
}

fn main() {
    if let Some(binary) = release_binary() {
        herald_tests::process::set_binary(binary);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let publish = publishing_alone(count("HERALD_FANOUT_PUBLISH", 200_000)).await;
        println!("fanout: publishing alone {publish}");
        let whole = whole_path(count("HERALD_FANOUT_PROFILES", 1_000_000)).await;
        println!("fanout: whole path {whole}");
        let results = json!({"publishing": publish, "wholePath": whole});
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fanout");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&results).unwrap()).unwrap();
    });
}
