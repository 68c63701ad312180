//! The `herald` binary as users run it: real processes against a real PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_core::Scope;
use herald_tests::TestDatabase;
use serde_json::json;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn herald(database: &TestDatabase) -> Command {
    let mut command = Command::new(HERALD);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERALD_DATABASE_URL", &database.url)
        // Several workers run at once here: each serves its metrics on a port of its own.
        .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
        // Many processes share the test server's 100 connections with the other test binaries.
        .env("HERALD_DATABASE_POOL_SIZE", "4");
    command
}

#[tokio::test]
async fn keys_create_prints_only_the_key_and_stores_only_its_hash() {
    let database = TestDatabase::create().await;
    let output = herald(&database)
        .args(["keys", "create", "--sandbox", "shop", "--scopes", "executions:write,campaigns:read"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "only the key on stdout: {stdout:?}");
    assert!(key.starts_with("hk_"), "{key}");

    let store = database.store();
    let record = store.find_api_key(key).await.unwrap().expect("the key works");
    assert_eq!(record.sandbox, "shop");
    assert_eq!(record.scopes, [Scope::CampaignsRead, Scope::ExecutionsWrite]);

    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = client.query("SELECT key_hash FROM api_keys", &[]).await.unwrap();
    let stored: Vec<u8> = rows[0].get(0);
    assert_ne!(stored, key.as_bytes(), "the key itself is not stored");
    assert_eq!(stored.len(), 32);
}

#[tokio::test]
async fn a_client_command_without_a_key_names_the_flag_and_the_variable_once() {
    let database = TestDatabase::create().await;
    let output = herald(&database).args(["execute", "otp-sms", "--to", "+33612345678"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--api-key") && stderr.contains("HERALD_API_KEY"), "{stderr}");
    assert_eq!(stderr.matches("no API key").count(), 1, "said once, not also logged: {stderr}");
}

#[tokio::test]
async fn keys_create_refuses_unknown_scopes() {
    let database = TestDatabase::create().await;
    let output =
        herald(&database).args(["keys", "create", "--sandbox", "shop", "--scopes", "campaigns:nuke"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown scope `campaigns:nuke`"));
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn migrate_run_by_several_processes_at_once_succeeds_everywhere() {
    let database = TestDatabase::create().await;
    let children: Vec<_> =
        (0..3).map(|_| herald(&database).arg("migrate").stderr(Stdio::piped()).spawn().unwrap()).collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(database.store().migrate().await.unwrap(), Vec::<i32>::new());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn api_serves_with_the_bootstrap_key_and_stops_cleanly_on_sigterm() {
    let database = TestDatabase::create().await;
    let port = free_port();
    let bootstrap = "hk_bootstrap_for_this_test";
    let mut child = herald(&database)
        .arg("api")
        .env("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("HERALD_BOOTSTRAP_API_KEY", bootstrap)
        .env("HERALD_BOOTSTRAP_SANDBOX", "local")
        .env("HERALD_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(30), "the api did not become ready");
        assert!(child.try_wait().unwrap().is_none(), "the api exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let created = http
        .post(format!("{base}/campaigns"))
        .bearer_auth(bootstrap)
        .json(&json!({"name": "otp", "channel": "sms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let record = database.store().find_api_key(bootstrap).await.unwrap().unwrap();
    assert_eq!((record.sandbox.as_str(), record.scopes.len()), ("local", Scope::ALL.len()));

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the api did not stop within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(!logs.contains(bootstrap), "the bootstrap key must not be logged: {logs}");
    assert!(logs.lines().all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok()), "json logs: {logs}");
}

/// Forwards connections accepted on `listener` to PostgreSQL; stands for a database that comes up late.
async fn forward_to_postgres(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn api_waits_for_a_database_that_comes_up_after_it() {
    let database = TestDatabase::create().await;
    let db_port = free_port();
    let late_url = database.url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{db_port}"), 1);
    assert_ne!(late_url, database.url, "the test database URL names 127.0.0.1:5432");
    let http_port = free_port();
    let mut child = Command::new(HERALD)
        .env_clear()
        .args(["api", "--database-wait-seconds", "30"])
        .env("HERALD_DATABASE_URL", &late_url)
        .env("HERALD_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(child.try_wait().unwrap().is_none(), "the api gave up instead of waiting");

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", db_port)).await.unwrap();
    tokio::spawn(forward_to_postgres(listener));
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("http://127.0.0.1:{http_port}/readyz")).send().await.map(|r| r.status().as_u16()).ok()
        != Some(200)
    {
        assert!(started.elapsed() < Duration::from_secs(20), "the api did not come up once the database did");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(database.store().migrate().await.unwrap(), Vec::<i32>::new(), "the api migrated once it could");
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("database not ready"));
}

#[tokio::test]
async fn api_gives_up_on_an_absent_database_after_the_configured_wait() {
    let database = TestDatabase::create().await;
    let absent = database.url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", free_port()), 1);
    let started = Instant::now();
    let output = Command::new(HERALD)
        .env_clear()
        .args(["api", "--database-wait-seconds", "1", "--http-addr", "127.0.0.1:0"])
        .env("HERALD_DATABASE_URL", &absent)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("preparing the database at start-up"));
}

#[tokio::test]
async fn sigterm_while_waiting_for_the_database_at_start_up_exits_cleanly() {
    let database = TestDatabase::create().await;
    let absent = database.url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", free_port()), 1);
    for role in ["api", "worker", "dev"] {
        let child = Command::new(HERALD)
            .env_clear()
            .args([role, "--database-wait-seconds", "60"])
            .env("HERALD_DATABASE_URL", &absent)
            .env("HERALD_HTTP_ADDR", "127.0.0.1:0")
            .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let output = sigterm(child, Duration::from_secs(10)).await;
        // Before, the signal killed it (exit 143) with nothing logged.
        assert!(output.status.success(), "{role}: {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
}

#[tokio::test]
async fn an_sns_origin_pattern_that_trusts_any_origin_stops_start_up() {
    let database = TestDatabase::create().await;
    for (pattern, said) in [
        ("", "HERALD_SNS_ORIGIN_PATTERN is empty"),
        (".*", "matches any origin"),
        ("sns", "matches any origin"),
        ("^https://(sns", "is not a regex"),
    ] {
        let output = herald(&database)
            .args(["api", "--http-addr", "127.0.0.1:0"])
            .env("HERALD_SNS_ORIGIN_PATTERN", pattern)
            .env("HERALD_FEEDBACK_SNS_TOPIC_ARNS", "arn:aws:sns:us-east-1:123456789012:ses-events")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{pattern:?}: {stderr}");
        assert!(stderr.contains(said), "{pattern:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{pattern:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_malformed_broker_url_stops_start_up_without_quoting_it() {
    let database = TestDatabase::create().await;
    for url in ["amqp//guest:hunter2@@127.0.0.1:x/", "http://guest:hunter2@127.0.0.1:5672/"] {
        let output =
            herald(&database).args(["api", "--http-addr", "127.0.0.1:0"]).env("HERALD_AMQP_URL", url).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}: {stderr}");
        assert!(stderr.contains("HERALD_AMQP_URL is not an AMQP URL"), "{url}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
    }
}

#[tokio::test]
async fn worker_declares_the_topology_consumes_and_stops_cleanly_on_sigterm() {
    let database = TestDatabase::create().await;
    let topology = herald_tests::broker::TestTopology::new(None);
    let mut child = herald(&database)
        .args(["worker", "--amqp-prefix", &topology.topology.prefix])
        .env("HERALD_AMQP_URL", herald_tests::broker::amqp_url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The worker declares the topology: a passive declare of the queue succeeds once it has.
    let queue = topology.queue(herald_core::Channel::Sms);
    let started = Instant::now();
    while !topology.exists(&queue).await {
        assert!(started.elapsed() < Duration::from_secs(30), "the worker did not declare its queues");
        assert!(child.try_wait().unwrap().is_none(), "the worker exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(status.success(), "{status:?}: {logs}");
    assert!(logs.contains("worker stopped"), "{logs}");
}

/// A `herald worker` process against the test app's database and topology, sending to moto.
fn worker_process(app: &herald_tests::TestApp, moto: &herald_tests::moto::Moto) -> std::process::Child {
    herald(&app.database)
        .args(["worker", "--amqp-prefix", &app.topology().topology.prefix])
        .env("HERALD_AMQP_URL", herald_tests::broker::amqp_url())
        .env("HERALD_RETRY_TIERS_SECONDS", "1,2")
        .env("HERALD_MIGRATE_ON_START", "false")
        .env("HERALD_LOG_FORMAT", "json")
        // moto answers slowly when the machine is loaded (the whole suite runs at once); a
        // timed-out call that moto did take is rightly `unknown`, not `sent`, which would make
        // the count below fall short without anything being wrong.
        .env("HERALD_PROVIDER_TIMEOUT_MS", "60000")
        .env("AWS_ENDPOINT_URL", &moto.url)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM and waits up to `within` for the process to exit; its output.
async fn sigterm(mut child: std::process::Child, within: Duration) -> std::process::Output {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the process did not stop within {within:?} of SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().unwrap()
}

/// Sends SIGTERM, waits for a clean exit, and returns the `sent` count the worker logged.
async fn stop_worker(child: std::process::Child) -> u64 {
    let output = sigterm(child, Duration::from_secs(30)).await;
    let logs = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{logs}");
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "worker stopped")
        .and_then(|line| line["sent"].as_u64())
        .unwrap_or_else(|| panic!("no `worker stopped` line with a count: {logs}"))
}

#[tokio::test]
async fn two_worker_processes_share_2000_executions_each_sent_exactly_once() {
    use futures_util::StreamExt;
    let moto = herald_tests::moto::Moto::start().await;
    let app = std::sync::Arc::new(herald_tests::TestApp::spawn_with(herald_tests::TestOptions::with_broker()).await);
    let campaign = app.live_campaign(&herald_tests::fixtures::otp_sms("otp")).await;
    let workers = [worker_process(&app, &moto), worker_process(&app, &moto)];
    // Both must be consuming before the burst, or a loaded machine lets the first take it all.
    let queue = app.topology().queue(herald_core::Channel::Sms);
    let started = Instant::now();
    while app.topology().consumers(&queue).await < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "the two workers never both consumed {queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = 2_000;
    let executions = (0..total).map(|n| {
        let (app, campaign) = (std::sync::Arc::clone(&app), campaign.clone());
        async move {
            let phone = format!("+3361{n:07}");
            let body = herald_tests::execution(
                &format!("p-{n}"),
                &campaign,
                &[(phone.as_str(), json!({"otp": format!("{n:06}")}))],
            );
            assert_eq!(app.post("/im/executions/unitary", &body).await.status.as_u16(), 202);
        }
    });
    futures_util::stream::iter(executions).buffer_unordered(32).collect::<Vec<_>>().await;

    let started = Instant::now();
    let sms = loop {
        let sms = moto.data().await["sns"]["SMS"].as_array().cloned().unwrap_or_default();
        if sms.len() >= total {
            break sms;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "moto received {} of {total}", sms.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut sent = Vec::new();
    for worker in workers {
        sent.push(stop_worker(worker).await);
    }
    let phones: std::collections::HashSet<&str> = sms.iter().filter_map(|m| m["phone_number"].as_str()).collect();
    assert_eq!(sms.len(), total, "no duplicate sends");
    assert_eq!(phones.len(), total, "every execution sent");
    assert_eq!(sent.iter().sum::<u64>(), total as u64);
    assert!(sent.iter().all(|count| *count > 0), "both processes did work: {sent:?}");
    println!("two worker processes sent {sent:?}");
}

#[tokio::test]
async fn herald_dev_sends_the_example_otp_to_the_outbox_and_stops_cleanly() {
    let database = TestDatabase::create().await;
    let topology = herald_tests::broker::TestTopology::new(None);
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let outbox = std::env::temp_dir().join(format!("herald-dev-{}.jsonl", uuid::Uuid::new_v4()));
    let key = "hk_dev_test_key";
    let mut child = herald(&database)
        .arg("dev")
        .env("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("HERALD_BOOTSTRAP_API_KEY", key)
        .env("HERALD_AMQP_URL", herald_tests::broker::amqp_url())
        .env("HERALD_AMQP_PREFIX", &topology.topology.prefix)
        .env("HERALD_PROVIDER", "outbox")
        .env("HERALD_OUTBOX_PATH", &outbox)
        .env("HERALD_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.1/32")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{api}/readyz")).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(30), "herald dev did not become ready");
        assert!(child.try_wait().unwrap().is_none(), "herald dev exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/otp-sms.json");
    let applied = herald(&database)
        .args(["campaign", "apply", "-f", example.to_str().unwrap(), "--activate"])
        .env("HERALD_API_URL", &api)
        .env("HERALD_API_KEY", key)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let applied: serde_json::Value = serde_json::from_slice(&applied.stdout).unwrap();
    assert_eq!((applied["status"].as_str(), applied["created"].as_bool()), (Some("live"), Some(true)));
    let campaign = applied["id"].as_str().unwrap();

    // As README shows it: the CLI sends, prints the execution id, then follows it to `sent`.
    let executed = herald(&database)
        .args(["execute", "otp-sms", "--to", "+33612345678", "--context", "otp=482913"])
        .env("HERALD_API_URL", &api)
        .env("HERALD_API_KEY", key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&executed.stdout).to_string();
    assert!(executed.status.success(), "{stdout}{}", String::from_utf8_lossy(&executed.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(uuid::Uuid::parse_str(lines[0]).is_ok(), "the execution id first: {stdout}");
    assert_eq!(lines.last(), Some(&"sent"), "{stdout}");
    // A push campaign: the token's platform is the campaign's only one unless --platform says.
    let push = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/push-alert.json");
    let applied = herald(&database)
        .args(["campaign", "apply", "-f", push.to_str().unwrap(), "--activate"])
        .env("HERALD_API_URL", &api)
        .env("HERALD_API_KEY", key)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let context = ["--context", "device=Pixel", "--context", "time=12:00", "--context", "signInId=s-1"];
    let pushed = herald(&database)
        .args(["execute", "security-alert-push", "--to", "device-token-1"])
        .args(context)
        .env("HERALD_API_URL", &api)
        .env("HERALD_API_KEY", key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&pushed.stdout).to_string();
    assert!(pushed.status.success(), "{stdout}{}", String::from_utf8_lossy(&pushed.stderr));
    assert_eq!(stdout.lines().last(), Some("sent"), "{stdout}");

    // The suppression list from the CLI: a suppressed number is excluded without a send, and
    // sent to again once removed.
    let cli = |args: &[&str]| {
        herald(&database).args(args).env("HERALD_API_URL", &api).env("HERALD_API_KEY", key).output().unwrap()
    };
    let added = cli(&["suppressions", "add", "sms", "+33699999999", "--detail", "asked by phone"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let listed = cli(&["suppressions", "list", "--channel", "sms"]);
    let listed: Vec<serde_json::Value> =
        String::from_utf8_lossy(&listed.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["address"], &listed[0]["reason"]),
        (&serde_json::json!("+33699999999"), &serde_json::json!("manual"))
    );
    let refused = cli(&["execute", "otp-sms", "--to", "+33699999999", "--context", "otp=111111"]);
    let stdout = String::from_utf8_lossy(&refused.stdout).to_string();
    assert!(!refused.status.success(), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("excluded (suppressed)"), "{stdout}");
    let bad = cli(&["suppressions", "add", "sms", "not-a-number"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("E.164"));
    assert!(cli(&["suppressions", "remove", "sms", "+33699999999"]).status.success());
    assert!(!cli(&["suppressions", "remove", "sms", "+33699999999"]).status.success(), "already removed");
    let again = cli(&["execute", "otp-sms", "--to", "+33699999999", "--context", "otp=222222"]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).lines().last(), Some("sent"));
    // The feedback webhook from the CLI: the secret once, never again; inside addresses refused.
    let inside = cli(&["webhooks", "set", "--url", "http://10.0.0.1/hook"]);
    assert!(!inside.status.success() && String::from_utf8_lossy(&inside.stderr).contains("not public"));
    let hook = format!("http://127.0.0.1:{}/hook", free_port());
    let set = cli(&["webhooks", "set", "--url", &hook, "--events", "sent,bounce", "--channels", "sms"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let set: serde_json::Value = serde_json::from_slice(&set.stdout).unwrap();
    assert!(set["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(set["eventTypes"], serde_json::json!(["sent", "bounce"]));
    let shown: serde_json::Value = serde_json::from_slice(&cli(&["webhooks", "show"]).stdout).unwrap();
    assert_eq!((&shown["url"], &shown["secret"]), (&serde_json::json!(hook), &serde_json::Value::Null));
    assert!(cli(&["webhooks", "remove"]).status.success());
    assert!(!cli(&["webhooks", "show"]).status.success());
    // Audiences from the CLI: a list uploaded from a CSV file (by name), a filter computed at
    // once, a hostile filter refused with its pointer.
    let created = cli(&["audiences", "create", "vip"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let members = std::env::temp_dir().join(format!("herald-vip-{}.csv", uuid::Uuid::new_v4()));
    std::fs::write(&members, "userId,type\n+33611111111,\nx@example.com,external\n+33611111111,\n").unwrap();
    let uploaded = cli(&["audiences", "upload", "vip", "-f", members.to_str().unwrap(), "--namespace", "phone"]);
    assert!(uploaded.status.success(), "{}", String::from_utf8_lossy(&uploaded.stderr));
    let uploaded: serde_json::Value = serde_json::from_slice(&uploaded.stdout).unwrap();
    assert_eq!((&uploaded["size"], &uploaded["duplicates"]), (&serde_json::json!(2), &serde_json::json!(1)));
    let filter = r#"{"field": "attributes.vip", "op": "eq", "value": true}"#;
    let computed = cli(&["audiences", "create", "vip-profiles", "--filter", filter]);
    assert!(computed.status.success(), "{}", String::from_utf8_lossy(&computed.stderr));
    let hostile =
        cli(&["audiences", "create", "bad", "--filter", r#"{"field": "attributes.x'--", "op": "eq", "value": 1}"#]);
    assert!(!hostile.status.success() && String::from_utf8_lossy(&hostile.stderr).contains("/filter/field"));
    let listed = cli(&["audiences", "list"]);
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["vip", "vip-profiles"]);
    let _ = std::fs::remove_file(&members);

    let started = Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&outbox).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains("482913")) {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the OTP never reached the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(line["channel"], "sms");
    assert_eq!(line["to"], "+33612345678");
    assert_eq!(line["body"], "482913 is your Example code. It expires in 5 minutes.");
    assert_eq!(line["senderId"], "Example");
    // One process, one registry: the worker's outcomes are on the API's /metrics.
    // The OTP, and the number sent to again once off the suppression list.
    let sent = r#"herald_delivery_outcomes_total{channel="sms",status="sent",reason=""} 2"#;
    let started = Instant::now();
    while !http.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap().contains(sent) {
        assert!(started.elapsed() < Duration::from_secs(10), "the send is not on /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The API reads the queues the worker consumes (every 15 s, the first as soon as it connects).
    let consumed = format!("herald_queue_consumers{{channel=\"sms\",queue=\"{}.sms\"}} 1", topology.topology.prefix);
    let started = Instant::now();
    while !http.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap().contains(&consumed) {
        assert!(started.elapsed() < Duration::from_secs(40), "{consumed} is not on /metrics");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // One job set for the API and the worker: one report rollup (before, each role started its
    // own), one delivery loop, one broker connection for publishing, one server.
    let metrics = http.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap();
    for job in
        ["report-rollup", "delivery", "broker-connection", "http", "execution-purge", "rate-limit-purge", "queue-watch"]
    {
        let line = format!("herald_background_jobs{{job=\"{job}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }

    // Applying the same file again updates the campaign instead of creating a second one.
    let again = herald(&database)
        .args(["campaign", "apply", "-f", example.to_str().unwrap()])
        .env("HERALD_API_URL", &api)
        .env("HERALD_API_KEY", key)
        .output()
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!((again["id"].as_str(), again["created"].as_bool()), (Some(campaign), Some(false)));

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "herald dev did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let rollups = log.lines().filter(|line| line.contains("background job started") && line.contains("report-rollup"));
    assert_eq!(rollups.count(), 1, "herald dev starts one report rollup:\n{log}");
    let _ = std::fs::remove_file(outbox);
}

// Multi-threaded: the API under probe runs in this test's runtime while the probe process blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_succeeds_on_2xx_and_fails_otherwise() {
    let database = TestDatabase::create().await;
    let app = herald_tests::TestApp::spawn().await;
    let up = herald(&database).args(["probe", "--url", &format!("{}/healthz", app.address)]).output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let missing = herald(&database).args(["probe", "--url", &format!("{}/nope", app.address)]).output().unwrap();
    assert!(!missing.status.success());
    let closed =
        herald(&database).args(["probe", "--url", &format!("http://127.0.0.1:{}/", free_port())]).output().unwrap();
    assert!(!closed.status.success());
}

/// A `herald worker` process writing to its own outbox file.
fn outbox_worker(app: &herald_tests::TestApp, outbox: &Path) -> std::process::Child {
    herald(&app.database)
        .args(["worker", "--amqp-prefix", &app.topology().topology.prefix])
        .env("HERALD_AMQP_URL", herald_tests::broker::amqp_url())
        .env("HERALD_RETRY_TIERS_SECONDS", "1,2")
        .env("HERALD_MIGRATE_ON_START", "false")
        .env("HERALD_LOG_FORMAT", "json")
        .env("HERALD_PROVIDER", "outbox")
        .env("HERALD_OUTBOX_PATH", outbox)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn outbox_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test]
async fn three_worker_processes_share_3000_messages_and_a_sigterm_mid_run_loses_nothing() {
    use futures_util::StreamExt;
    let app = std::sync::Arc::new(herald_tests::TestApp::spawn_with(herald_tests::TestOptions::with_broker()).await);
    let campaign = app.live_campaign(&herald_tests::fixtures::otp_sms("otp")).await;
    let total = 3_000;
    let executions = (0..total).map(|n| {
        let (app, campaign) = (std::sync::Arc::clone(&app), campaign.clone());
        async move {
            let body = herald_tests::execution(
                &format!("s-{n}"),
                &campaign,
                &[("+33612345678", json!({"otp": format!("{n:06}")}))],
            );
            assert_eq!(app.post("/im/executions/unitary", &body).await.status.as_u16(), 202);
        }
    });
    futures_util::stream::iter(executions).buffer_unordered(32).collect::<Vec<_>>().await;

    let directory = std::env::temp_dir().join(format!("herald-three-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory).unwrap();
    let outboxes: Vec<PathBuf> = (0..3).map(|i| directory.join(format!("worker-{i}.jsonl"))).collect();
    let mut workers: Vec<_> = outboxes.iter().map(|path| outbox_worker(&app, path)).collect();
    let count = || outboxes.iter().map(|path| outbox_lines(path).len()).sum::<usize>();

    // Stop one worker while the run is in full swing.
    let started = Instant::now();
    while count() < total / 3 {
        // Generous: on a loaded machine a worker takes a while to declare its shard queues.
        if started.elapsed() > Duration::from_secs(300) {
            let stalled = count();
            let logs: Vec<String> = workers
                .drain(..)
                .map(|mut worker| {
                    let _ = worker.kill();
                    String::from_utf8_lossy(&worker.wait_with_output().unwrap().stderr).to_string()
                })
                .collect();
            panic!("the workers stalled at {stalled}; their logs:\n{}", logs.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_sent = stop_worker(workers.remove(0)).await;
    assert!(count() < total, "the run ended before the SIGTERM; make it longer");

    while count() < total {
        assert!(started.elapsed() < Duration::from_secs(120), "stuck at {} of {total}", count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut per_worker = vec![stopped_sent];
    for worker in workers {
        per_worker.push(stop_worker(worker).await);
    }
    let bodies: Vec<String> = outboxes
        .iter()
        .flat_map(|path| outbox_lines(path))
        .map(|line| line["body"].as_str().unwrap().to_string())
        .collect();
    let distinct: std::collections::HashSet<&String> = bodies.iter().collect();
    assert_eq!(distinct.len(), total, "no loss");
    assert_eq!(bodies.len(), total, "no duplicate");
    assert_eq!(per_worker.iter().sum::<u64>(), total as u64);
    assert!(per_worker.iter().all(|sent| *sent > 0), "every process did work: {per_worker:?}");
    assert_eq!(outbox_lines(&outboxes[0]).len() as u64, per_worker[0], "the stopped worker's sends are all recorded");
    println!("three worker processes sent {per_worker:?} (the first was stopped mid-run)");
    let _ = std::fs::remove_dir_all(directory);
}
