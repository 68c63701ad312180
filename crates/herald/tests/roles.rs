//! A process runs several roles (the worker and its metrics endpoint; the API and a worker in
//! `herald dev`): when one fails, the process stops and says why, instead of running on half-broken.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::TestDatabase;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn herald(database: &TestDatabase) -> Command {
    let mut command = Command::new(HERALD);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERALD_DATABASE_URL", &database.url)
        .env("HERALD_AMQP_URL", herald_tests::broker::amqp_url())
        .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
        .env("HERALD_LOG_FORMAT", "json");
    command
}

#[tokio::test]
async fn an_unknown_worker_channel_is_refused_before_anything_starts() {
    let database = TestDatabase::create().await;
    let output = herald(&database).arg("worker").env("HERALD_WORKER_CHANNELS", "email,fax").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fax"), "{stderr}");
}

#[tokio::test]
async fn herald_dev_stops_when_its_api_cannot_listen() {
    let database = TestDatabase::create().await;
    let topology = herald_tests::broker::TestTopology::new(None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = herald(&database)
        .arg("dev")
        .env("HERALD_HTTP_ADDR", taken.local_addr().unwrap().to_string())
        .env("HERALD_AMQP_PREFIX", &topology.topology.prefix)
        .env("HERALD_PROVIDER", "outbox")
        .env("HERALD_OUTBOX_PATH", std::env::temp_dir().join("herald-roles-outbox.jsonl"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("herald dev kept running (its worker) after the API failed to listen");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("binding"), "the reason is given: {stderr}");
    drop(taken);
}
