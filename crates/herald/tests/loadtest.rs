//! `herald loadtest` against `herald dev` and `herald fake-provider`: what it counts is what the
//! provider received, and its loss and duplicate counters fail when the provider drops or
//! repeats a message.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::TestDatabase;
use serde_json::Value;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const KEY: &str = "hk_loadtest_test_key";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(http: &reqwest::Client, url: &str, child: &mut Child) {
    let started = Instant::now();
    while http.get(url).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(30), "{url} did not answer");
        assert!(child.try_wait().unwrap().is_none(), "the process behind {url} exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `herald campaign apply --activate` of one of the examples.
fn activate(api: &str, example: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/{example}.json"));
    let applied = Command::new(HERALD)
        .args(["campaign", "apply", "--activate", "-f", path.to_str().unwrap()])
        .env("HERALD_API_URL", api)
        .env("HERALD_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}

/// One `herald loadtest` run; its exit status and its JSON summary.
fn loadtest(api: &str, provider: &str, out: &std::path::Path) -> (bool, Value) {
    let output = Command::new(HERALD)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERALD_API_URL", api)
        .env("HERALD_API_KEY", KEY)
        .args(["loadtest", "loadtest-email", "--rate", "100", "--duration-seconds", "1", "--drain-seconds", "3"])
        .args(["--provider", provider, "--json"])
        .arg(out)
        .output()
        .unwrap();
    let summary = serde_json::from_slice(&std::fs::read(out).expect("the JSON summary")).unwrap();
    println!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), summary)
}

#[tokio::test]
async fn loadtest_counts_what_the_provider_received_and_catches_a_lost_or_repeated_message() {
    let database = TestDatabase::create().await;
    let topology = herald_tests::broker::TestTopology::new(None);
    let (api_port, provider_port) = (herald_tests::free_port(), herald_tests::free_port());
    let (api, provider) = (format!("http://127.0.0.1:{api_port}"), format!("http://127.0.0.1:{provider_port}"));
    let http = reqwest::Client::new();
    let mut fake = Killed(
        Command::new(HERALD)
            .args(["fake-provider", "--addr", &format!("127.0.0.1:{provider_port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(&http, &format!("{provider}/_fake/markers"), &mut fake.0).await;
    let mut dev = Killed(
        Command::new(HERALD)
            .arg("dev")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HERALD_DATABASE_URL", &database.url)
            .env("HERALD_DATABASE_POOL_SIZE", "4")
            .env("HERALD_HTTP_ADDR", format!("127.0.0.1:{api_port}"))
            .env("HERALD_BOOTSTRAP_API_KEY", KEY)
            .env("HERALD_AMQP_URL", herald_tests::broker::amqp_url())
            .env("HERALD_AMQP_PREFIX", &topology.topology.prefix)
            .env("AWS_ENDPOINT_URL", &provider)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HERALD_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    wait_ready(&http, &format!("{api}/readyz"), &mut dev.0).await;
    activate(&api, "loadtest-email");
    let out = std::env::temp_dir().join(format!("herald-loadtest-{}.json", uuid::Uuid::new_v4()));

    // An honest provider: every accepted message arrives once, and the run succeeds.
    let (ok, summary) = loadtest(&api, &provider, &out);
    assert!(ok, "{summary}");
    assert_eq!((summary["accepted"].as_u64(), summary["sent"].as_u64()), (Some(100), Some(100)), "{summary}");
    assert_eq!((summary["lost"].as_u64(), summary["duplicated"].as_u64()), (Some(0), Some(0)), "{summary}");
    assert!(summary["dueToProviderMs"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{summary}");
    // The run's markers are forgotten once read: a fake serving many runs does not grow.
    let left: Value =
        http.get(format!("{provider}/_fake/markers?prefix=hlm.")).send().await.unwrap().json().await.unwrap();
    assert_eq!((left["count"].as_u64(), left["calls"].as_u64()), (Some(0), Some(101)), "{left}");
    let refused = http.delete(format!("{provider}/_fake/markers?prefix=hlm.")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 400, "forgetting every run at once is refused");

    // Every 25th call answered 200 and thrown away: 4 of the 101 calls after the reset.
    let reset = http.post(format!("{provider}/_fake/reset?dropEvery=25")).send().await.unwrap();
    assert_eq!(reset.status().as_u16(), 204);
    let (ok, summary) = loadtest(&api, &provider, &out);
    assert!(!ok, "a run that lost messages must fail: {summary}");
    // The load test waits for its first call's message before starting, so that is call 1.
    let lost = summary["lost"].as_u64().unwrap();
    assert_eq!(lost, 4, "{summary}");
    assert_eq!(summary["sent"].as_u64(), Some(100 - lost), "{summary}");
    assert_eq!(summary["duplicated"].as_u64(), Some(0), "{summary}");

    // Every 25th call recorded twice.
    http.post(format!("{provider}/_fake/reset?repeatEvery=25")).send().await.unwrap();
    let (ok, summary) = loadtest(&api, &provider, &out);
    assert!(!ok, "a run that duplicated messages must fail: {summary}");
    let duplicated = summary["duplicated"].as_u64().unwrap();
    assert_eq!(duplicated, 4, "{summary}");
    assert_eq!(summary["extraCopies"].as_u64(), Some(duplicated), "{summary}");
    assert_eq!((summary["sent"].as_u64(), summary["lost"].as_u64()), (Some(100), Some(0)), "{summary}");

    // A campaign that does not render the marker stops at the first call, with the reason,
    // instead of a run where everything is "lost".
    http.post(format!("{provider}/_fake/reset")).send().await.unwrap();
    activate(&api, "password-reset-email");
    let started = Instant::now();
    let output = Command::new(HERALD)
        .env_clear()
        .env("HERALD_API_URL", &api)
        .env("HERALD_API_KEY", KEY)
        .args(["loadtest", "password-reset-email", "--context", "resetUrl=https://x.test/r", "--drain-seconds", "2"])
        .args(["--provider", &provider])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("context.marker"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15), "it stops at the first call");
    let _ = std::fs::remove_file(&out);
}
