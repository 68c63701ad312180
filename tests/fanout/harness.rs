//! Real `herald api` and `herald worker` processes against a database of their own (on the
//! shared PostgreSQL) and a queue prefix of their own (on the shared RabbitMQ, deleted
//! afterwards), the fake SNS, and the HTTP calls a scenario makes. Only Herald's own processes
//! are killed here; the shared services are never touched.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use herald_tests::TestDatabase;
use herald_tests::broker::TestTopology;
use herald_tests::process::HeraldProcess;
use serde_json::{Value, json};

use crate::fake_sns::FakeSns;

pub(crate) const API_KEY: &str = "hk_fanout_suite_only";
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A herald process and, for an API, its base URL.
#[derive(Debug)]
pub(crate) struct Herald {
    process: HeraldProcess,
    pub(crate) url: String,
}

impl std::ops::Deref for Herald {
    type Target = HeraldProcess;

    fn deref(&self) -> &HeraldProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Herald {
    fn deref_mut(&mut self) -> &mut HeraldProcess {
        &mut self.process
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
        let environment = self.environment(&[("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}"))]);
        let process = HeraldProcess::new(name, &["api"], environment, format!("{url}/readyz"), &self.logs);
        let mut api = Herald { process, url };
        api.spawn();
        api.wait_ready(READY_WITHIN).await;
        api
    }

    pub(crate) async fn worker(&self, name: &str) -> Herald {
        let port = herald_tests::free_port();
        let environment = self.environment(&[("HERALD_METRICS_ADDR", format!("127.0.0.1:{port}"))]);
        let ready = format!("http://127.0.0.1:{port}/metrics");
        let mut worker = Herald {
            process: HeraldProcess::new(name, &["worker"], environment, ready, &self.logs),
            url: String::new(),
        };
        worker.spawn();
        worker.wait_ready(READY_WITHIN).await;
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
