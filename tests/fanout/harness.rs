//! Real `herald api` and `herald worker` processes against a database of their own (on the
//! shared PostgreSQL) and a queue prefix of their own (on the shared RabbitMQ, deleted
//! afterwards), the fake SNS, and the HTTP calls a scenario makes. Only Herald's own processes
//! are killed here; the shared services are never touched.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::TestDatabase;
use herald_tests::broker::TestTopology;
use serde_json::{Value, json};

use crate::fake_sns::FakeSns;

pub(crate) const API_KEY: &str = "hk_fanout_suite_only";

static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs `path` as herald from now on (a benchmark's release build).
#[allow(dead_code)]
pub(crate) fn set_binary(path: PathBuf) {
    let _ = BINARY.set(path);
}

/// The `herald` binary: [`set_binary`]'s, `HERALD_BIN`, else the one cargo built next to this
/// executable's `deps/`.
pub(crate) fn binary() -> PathBuf {
    if let Some(path) = BINARY.get() {
        return path.clone();
    }
    if let Ok(path) = std::env::var("HERALD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let path = exe.parent().and_then(Path::parent).map(|dir| dir.join("herald")).expect("a target directory");
    assert!(path.exists(), "{} is missing: build it with `cargo build -p herald` or set HERALD_BIN", path.display());
    path
}

/// One herald process, restartable with the same settings.
#[derive(Debug)]
pub(crate) struct Herald {
    pub(crate) name: String,
    args: Vec<String>,
    environment: Vec<(String, String)>,
    ready_url: String,
    /// The API's base URL (for an API process).
    pub(crate) url: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Herald {
    pub(crate) fn spawn(&mut self) {
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open a process log");
        use std::io::Write;
        let _ = writeln!(log, "---- starting {} ----", self.name);
        let child = Command::new(binary())
            .env_clear()
            .envs(self.environment.iter().cloned())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("could not start herald {}: {error}", self.name));
        self.child = Some(child);
    }

    pub(crate) async fn wait_ready(&mut self) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let started = Instant::now();
        loop {
            if let Ok(response) = http.get(&self.ready_url).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("herald {} exited at start-up ({status}); see {}", self.name, self.log.display());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "herald {} not ready; see {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: nothing is finished, no lease given up.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One scenario's world: its database, queue prefix, fake provider, processes' settings.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) database: TestDatabase,
    pub(crate) topology: TestTopology,
    pub(crate) fake: FakeSns,
    pub(crate) http: reqwest::Client,
    logs: PathBuf,
    settings: Vec<(String, String)>,
}

impl Stack {
    /// `settings` are extra `HERALD_*` variables every process gets.
    pub(crate) async fn new(name: &str, settings: &[(&str, &str)]) -> Self {
        let database = TestDatabase::create().await;
        let topology = TestTopology::new(None);
        let fake = FakeSns::start().await;
        let logs = std::env::temp_dir().join(format!("herald-fanout-{}", std::process::id())).join(name);
        std::fs::create_dir_all(&logs).expect("create the log directory");
        let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self { database, topology, fake, http: reqwest::Client::new(), logs, settings }
    }

    fn environment(&self, own: &[(&str, String)]) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HERALD_DATABASE_URL", self.database.url.clone()),
            ("HERALD_AMQP_URL", herald_tests::broker::amqp_url()),
            ("HERALD_AMQP_PREFIX", self.topology.topology.prefix.clone()),
            ("HERALD_BOOTSTRAP_API_KEY", API_KEY.into()),
            ("HERALD_LOG", "info".into()),
            ("HERALD_RATE_LIMIT_PER_SEC", "100000".into()),
            ("HERALD_KEY_RATE_LIMIT_PER_SEC", "100000".into()),
            ("HERALD_SMS_DAILY_QUOTA", "0".into()),
            ("AWS_ENDPOINT_URL", self.fake.url.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "fanout-suite".into()),
            ("AWS_SECRET_ACCESS_KEY", "fanout-suite".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        pairs.extend(self.settings.iter().cloned());
        pairs.extend(own.iter().map(|(k, v)| (k.to_string(), v.clone())));
        pairs
    }

    /// An API process on a port of its own, started and ready.
    pub(crate) async fn api(&self, name: &str) -> Herald {
        let port = herald_tests::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut api = Herald {
            name: name.into(),
            args: vec!["api".into()],
            environment: self.environment(&[("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}"))]),
            ready_url: format!("{url}/readyz"),
            url,
            log: self.logs.join(format!("{name}.log")),
            child: None,
        };
        api.spawn();
        api.wait_ready().await;
        api
    }

    pub(crate) async fn worker(&self, name: &str) -> Herald {
        let port = herald_tests::free_port();
        let mut worker = Herald {
            name: name.into(),
            args: vec!["worker".into()],
            environment: self.environment(&[("HERALD_METRICS_ADDR", format!("127.0.0.1:{port}"))]),
            ready_url: format!("http://127.0.0.1:{port}/metrics"),
            url: String::new(),
            log: self.logs.join(format!("{name}.log")),
            child: None,
        };
        worker.spawn();
        worker.wait_ready().await;
        worker
    }

    pub(crate) async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// A JSON call to `api`; panics unless it answers `expected`.
    pub(crate) async fn call(
        &self,
        api: &Herald,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", api.url)).bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, expected, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A live OTP SMS campaign, throttled to `rate` a second when given.
    pub(crate) async fn campaign(&self, api: &Herald, rate: Option<u32>) -> String {
        let mut document = herald_tests::fixtures::otp_sms("fan-out");
        if let Some(rate) = rate {
            document["throttleRatePerSec"] = json!(rate);
        }
        let created = self.call(api, reqwest::Method::POST, "/campaigns", Some(document), 201).await;
        let id = created["id"].as_str().unwrap().to_string();
        self.call(api, reqwest::Method::POST, &format!("/campaigns/{id}/activate"), None, 200).await;
        id
    }

    /// A list audience of the phone identities `numbers`.
    pub(crate) async fn list(&self, api: &Herald, name: &str, numbers: &[String]) -> String {
        let created = self.call(api, reqwest::Method::POST, "/audiences", Some(json!({"name": name})), 201).await;
        let id = created["id"].as_str().unwrap().to_string();
        let body: String = numbers.iter().map(|n| format!("{{\"userId\":\"{n}\"}}\n")).collect();
        let response = self
            .http
            .put(format!("{}/audiences/{id}/members?namespace=phone", api.url))
            .bearer_auth(API_KEY)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{}", response.text().await.unwrap());
        id
    }

    /// Ready messages left in every queue of the topology (work, retry tiers, dead letters).
    pub(crate) async fn queued(&self) -> u32 {
        let connection = herald_tests::broker::connect().await;
        let channel = connection.create_channel().await.unwrap();
        let mut total = 0;
        for queue in self.topology.topology.queues() {
            let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
            if let Ok(state) = channel.queue_declare(queue.as_str().into(), options, Default::default()).await {
                total += state.message_count();
            }
        }
        let _ = connection.close(0, "done".into()).await;
        total
    }
}

/// `count` distinct phone numbers starting with `prefix` (`+3361`, `+3362`, ...).
pub(crate) fn numbers(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:07}")).collect()
}

/// Polls `condition` every 100 ms for up to `within`.
pub(crate) async fn until(within: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !condition().await {
        assert!(started.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
