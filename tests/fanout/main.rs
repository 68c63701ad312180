//! Audience fan-outs across real `herald api` processes: one killed with SIGKILL mid-fan-out
//! while another resumes it, schedules fired by three instances at once, and a schedule that
//! falls due while every instance is down. Each recipient is checked at the fake provider: sent
//! exactly once, or (for a cancelled schedule) never.
//!
//! The scenarios take turns in one test, each with its own database and queue prefix; the
//! binary is `target/debug/herald` (built by `cargo test --workspace`) or `HERALD_BIN`.

mod fake_sns;
mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::{Stack, numbers, until};
use reqwest::Method;
use serde_json::json;

/// Every number in `expected` was called exactly once, and nothing else was called.
fn exactly_once(calls: &HashMap<String, u32>, expected: &[String]) -> Result<(), String> {
    let duplicated: Vec<(&String, &u32)> = calls.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<&String> = expected.iter().filter(|n| !calls.contains_key(*n)).collect();
    let strangers = calls.keys().filter(|n| !expected.contains(n)).count();
    if duplicated.is_empty() && missing.is_empty() && strangers == 0 {
        return Ok(());
    }
    Err(format!(
        "{} duplicated (first: {:?}), {} missing (first: {:?}), {strangers} not in the audience",
        duplicated.len(),
        duplicated.first(),
        missing.len(),
        missing.first()
    ))
}

async fn execution_row(client: &tokio_postgres::Client, id: &str) -> (String, i64, Option<i64>) {
    let id = uuid::Uuid::parse_str(id).unwrap();
    let row = client
        .query_one("SELECT status, cursor::bigint, late_ms FROM audience_executions WHERE execution_id = $1", &[&id])
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// kill -9 of the API publishing a 10,000-member fan-out at about 40%: the other API instance
/// takes the lease over once it runs out and resumes from the last checkpoint.
async fn resume_after_kill(stack: &Stack) {
    const MEMBERS: usize = 10_000;
    let mut first = stack.api("api-a").await;
    let _worker = stack.worker("worker").await;
    // 2,000 a second: about five seconds of publishing.
    let campaign = stack.campaign(&first, Some(2_000)).await;
    let members = numbers("+3361", MEMBERS);
    let audience = stack.list(&first, "kill", &members).await;
    let body = json!({"requestId": "kill", "campaignId": campaign, "audience": {"id": audience}, "context": {"otp": "246810"}});
    let accepted = stack.call(&first, Method::POST, "/im/executions/audience", Some(body), 202).await;
    let execution = accepted["executionId"].as_str().unwrap().to_string();
    let client = stack.sql().await;
    until(Duration::from_secs(30), "the first API to lease it", async || {
        client
            .query_one("SELECT lease_owner IS NOT NULL FROM audience_executions", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    // The second instance starts while the first holds the lease.
    let second = stack.api("api-b").await;
    until(Duration::from_secs(60), "40% published", async || {
        execution_row(&client, &execution).await.1 >= (MEMBERS as i64) * 2 / 5
    })
    .await;
    first.kill9();
    let (_, at_kill, _) = execution_row(&client, &execution).await;
    eprintln!("fanout: killed api-a at {at_kill} published, {} sent", stack.fake.total());
    assert!(at_kill < MEMBERS as i64, "the kill came after the fan-out ended; slow it down");
    until(Duration::from_secs(90), "the resumed fan-out to finish", async || {
        execution_row(&client, &execution).await.0 == "succeeded"
    })
    .await;
    until(Duration::from_secs(90), "every member sent", async || stack.fake.total() >= MEMBERS).await;
    until(Duration::from_secs(30), "the queues to drain", async || stack.queued().await == 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Err(problem) = exactly_once(&stack.fake.per_number(), &members) {
        panic!("after a kill -9 at {at_kill}/{MEMBERS} published: {problem}");
    }
    let status = stack.call(&second, Method::GET, &format!("/im/executions/audience/{execution}"), None, 200).await;
    assert_eq!(status["status"], "Succeeded", "{status}");
    assert_eq!(status["targetedProfileCount"], MEMBERS);
    assert_eq!(status["progress"]["published"], MEMBERS);
    assert_eq!(status["progress"]["sent"], MEMBERS, "{status}");
    let rows = client
        .query_one("SELECT count(*), count(DISTINCT recipient_index) FROM deliveries WHERE status = 'sent'", &[])
        .await
        .unwrap();
    assert_eq!((rows.get::<_, i64>(0), rows.get::<_, i64>(1)), (MEMBERS as i64, MEMBERS as i64));
    eprintln!("fanout: resume-after-kill ok: {MEMBERS} members sent once each, killed at {at_kill} published");
}

/// Three API instances see a schedule 5 s ahead: it fires once. A schedule deleted before it is
/// due never fires. A schedule that falls due while every instance is down fires once, late,
/// after one comes back, and says how late.
async fn schedules(stack: &Stack) {
    let mut apis = vec![stack.api("api-1").await, stack.api("api-2").await, stack.api("api-3").await];
    let _worker = stack.worker("worker").await;
    let campaign = stack.campaign(&apis[0], None).await;
    let (due, cancelled, restarted) = (numbers("+3362", 50), numbers("+3363", 20), numbers("+3364", 30));
    let due_audience = stack.list(&apis[0], "due", &due).await;
    let cancelled_audience = stack.list(&apis[1], "cancelled", &cancelled).await;
    let restarted_audience = stack.list(&apis[2], "restarted", &restarted).await;
    let schedule = |request: &str, audience: &str, seconds: i64| {
        let at = chrono::Utc::now() + chrono::Duration::seconds(seconds);
        json!({"requestId": request, "campaignId": campaign, "audience": {"id": audience},
               "context": {"otp": "135790"}, "schedule": {"executeAt": at}})
    };
    let first = stack
        .call(&apis[0], Method::POST, "/im/executions/audience", Some(schedule("due", &due_audience, 5)), 202)
        .await;
    assert_eq!(first["scheduleStatus"], "Scheduled");
    let second = stack
        .call(
            &apis[1],
            Method::POST,
            "/im/executions/audience",
            Some(schedule("cancelled", &cancelled_audience, 5)),
            202,
        )
        .await;
    let cancelled_id = second["scheduleId"].as_str().unwrap().to_string();
    let deleted =
        stack.call(&apis[2], Method::DELETE, &format!("/im/executions/schedules/{cancelled_id}"), None, 200).await;
    assert_eq!(deleted, json!({}));
    until(Duration::from_secs(30), "the due schedule's sends", async || stack.fake.total() >= due.len()).await;
    // Time for a second firing or the cancelled one to show, were either possible.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Err(problem) = exactly_once(&stack.fake.per_number(), &due) {
        panic!("a schedule seen by three instances: {problem}");
    }
    let client = stack.sql().await;
    let fired: i64 = client
        .query_one("SELECT count(*) FROM audience_executions WHERE fired_at IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(fired, 1, "one schedule fired");
    let schedule_id = first["scheduleId"].as_str().unwrap();
    let shown = stack.call(&apis[1], Method::GET, &format!("/im/executions/schedules/{schedule_id}"), None, 200).await;
    assert_eq!(shown["scheduleStatus"], "Fired", "{shown}");
    stack.call(&apis[2], Method::DELETE, &format!("/im/executions/schedules/{schedule_id}"), None, 409).await;

    // Due in 3 s, and every instance is gone until 6 s from now.
    let third = stack
        .call(
            &apis[2],
            Method::POST,
            "/im/executions/audience",
            Some(schedule("restarted", &restarted_audience, 3)),
            202,
        )
        .await;
    let restarted_id = third["scheduleId"].as_str().unwrap().to_string();
    let down = Instant::now();
    for api in &mut apis {
        api.kill9();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = stack.fake.total();
    assert_eq!(before, due.len(), "nothing fired while every instance was down");
    apis[0].spawn();
    apis[0].wait_ready(Duration::from_secs(60)).await;
    until(Duration::from_secs(30), "the late schedule's sends", async || {
        stack.fake.total() >= due.len() + restarted.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut expected = due.clone();
    expected.extend(restarted.iter().cloned());
    if let Err(problem) = exactly_once(&stack.fake.per_number(), &expected) {
        panic!("a schedule due during a restart: {problem}");
    }
    let shown = stack.call(&apis[0], Method::GET, &format!("/im/executions/schedules/{restarted_id}"), None, 200).await;
    assert_eq!(shown["scheduleStatus"], "Fired", "{shown}");
    let late = shown["lateMs"].as_i64().unwrap();
    assert!(late >= 2_000, "fired {late} ms late, {:?} after the instances went down", down.elapsed());
    let cancelled_row: String = client
        .query_one(
            "SELECT status FROM audience_executions WHERE schedule_id = $1",
            &[&uuid::Uuid::parse_str(&cancelled_id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cancelled_row, "cancelled");
    until(Duration::from_secs(30), "the queues to drain", async || stack.queued().await == 0).await;
    eprintln!("fanout: schedules ok: fired once by three instances, cancelled never, late one {late} ms late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_outs_survive_a_killed_instance_and_schedules_fire_exactly_once() {
    // Shortened lease and poll, so the take-over happens within seconds.
    let fast = [("HERALD_FANOUT_LEASE_SECONDS", "3"), ("HERALD_FANOUT_POLL_MS", "200")];
    let stack = Stack::new("resume-after-kill", &fast).await;
    resume_after_kill(&stack).await;
    drop(stack);
    // Herald's default lease and poll.
    let stack = Stack::new("schedules", &[]).await;
    schedules(&stack).await;
}
