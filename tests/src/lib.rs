//! The integration-test harness: a uniquely named PostgreSQL database per test, migrated, and the
//! HTTP API served in-process on port 0 with a manual clock the test can move.
//!
//! PostgreSQL must be running (see CONTRIBUTING.md); when it is not, tests fail with a message
//! that says how to start it rather than skipping.

pub mod broker;
pub mod moto;
pub mod postgres;
pub mod process;
pub mod rabbit;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_api::{ApiConfig, AppState};
use herald_core::{ManualClock, Scope};
use herald_store::Store;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The server to create test databases on, from `HERALD_TEST_DATABASE_URL`.
pub fn admin_database_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test and is dropped with it.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = admin_database_url();
        let name = format!("herald_test_{}", Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await.unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {admin_url} ({error}); start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or set HERALD_TEST_DATABASE_URL"
            )
        });
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the test database");
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
        Self { url: format!("{base}/{name}"), name }
    }

    pub fn store(&self) -> Store {
        Store::connect(&self.url, 8).expect("a valid test database URL")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived thread with its own runtime does the
        // cleanup. FORCE ends the connections the test's pool still holds.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
    }
}

/// Runs `job` (a loop that never ends by itself) until `stop` is cancelled.
pub fn until_stopped(
    stop: &CancellationToken,
    job: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let stop = stop.clone();
    async move {
        tokio::select! {
            () = job => {}
            () = stop.cancelled() => {}
        }
    }
}

/// How to build a [`TestApp`].
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Serve the execution API against RabbitMQ under a fresh topology.
    pub broker: bool,
    /// Override the broker URL (e.g. a closed port, to test outages).
    pub amqp_url: Option<String>,
    pub max_queue_length: Option<u32>,
    /// Recipient rates and daily quotas (generous by default: tests of other things never meet them).
    pub limits: herald_ingest::ratelimit::Limits,
    pub max_body_bytes: usize,
    pub lease: Duration,
    /// Retry tier delays of the topology (tests use short ones).
    pub retry_tiers: Vec<Duration>,
    /// `POST /feedback/sns` settings (off by default).
    pub sns: Option<herald_api::feedback::SnsPushSettings>,
    /// Networks webhooks may point into (none by default, as in production).
    pub webhook_allowed_networks: Vec<ipnet::IpNet>,
    /// Audience fan-outs (polled every 100 ms in tests).
    pub fanout: herald_ingest::fanout::FanoutSettings,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            broker: false,
            amqp_url: None,
            max_queue_length: None,
            limits: herald_ingest::ratelimit::Limits {
                sandbox_per_sec: 100_000,
                key_per_sec: 100_000,
                ..herald_ingest::ratelimit::Limits::none()
            },
            max_body_bytes: 64 * 1024,
            lease: Duration::from_secs(30),
            retry_tiers: vec![Duration::from_secs(1), Duration::from_secs(2)],
            sns: None,
            webhook_allowed_networks: Vec::new(),
            fanout: herald_ingest::fanout::FanoutSettings {
                poll: Duration::from_millis(100),
                ..herald_ingest::fanout::FanoutSettings::default()
            },
        }
    }
}

impl TestOptions {
    pub fn with_broker() -> Self {
        Self { broker: true, ..Self::default() }
    }
}

/// A running API with its own database, a manual clock and an all-scopes key for sandbox `a`.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub clock: Arc<ManualClock>,
    pub store: Store,
    /// All scopes, sandbox `a`.
    pub key: String,
    pub http: reqwest::Client,
    pub ingest: Option<Arc<herald_ingest::Ingest>>,
    /// The app's metrics registry; [`crate::worker::TestWorker`]s record into it too, as in `herald dev`.
    pub metrics: Arc<herald_telemetry::Metrics>,
    pub options: TestOptions,
    /// Everything the app runs in the background (server, broker connection, rollup): stopped
    /// with the app, and aborted when it is dropped.
    stop: CancellationToken,
    jobs: JoinSet<()>,
    // Declared last: dropped after the server is told to stop.
    pub topology: Option<Arc<broker::TestTopology>>,
    pub database: Arc<TestDatabase>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    pub async fn spawn_with(options: TestOptions) -> Self {
        let database = Arc::new(TestDatabase::create().await);
        let store = database.store();
        store.migrate().await.expect("migrate the test database");
        // Starts at the real time, so processes on the system clock (a `herald worker`) agree with
        // the app on what has expired; tests move it from there.
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let topology = options.broker.then(|| {
            let mut topology = broker::TestTopology::new(options.max_queue_length);
            topology.topology.retry_tiers = options.retry_tiers.clone();
            Arc::new(topology)
        });
        let mut app = Self::serve(database, store.clone(), clock, topology, options).await;
        app.key = store.create_api_key("a", &Scope::ALL, Some("test"), Utc::now()).await.expect("create a test key");
        app
    }

    /// A second API instance on the same database, broker topology and clock (its own caches).
    pub async fn spawn_peer(&self) -> Self {
        let mut peer = Self::serve(
            Arc::clone(&self.database),
            self.database.store(),
            Arc::clone(&self.clock),
            self.topology.clone(),
            self.options.clone(),
        )
        .await;
        peer.key = self.key.clone();
        peer
    }

    async fn serve(
        database: Arc<TestDatabase>,
        store: Store,
        clock: Arc<ManualClock>,
        topology: Option<Arc<broker::TestTopology>>,
        options: TestOptions,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let address = format!("http://{}", listener.local_addr().unwrap());
        let config = ApiConfig {
            max_body_bytes: options.max_body_bytes,
            public_url: address.clone(),
            sns: options.sns.clone(),
            webhook_allowed_networks: options.webhook_allowed_networks.clone(),
        };
        let metrics = Arc::new(herald_telemetry::Metrics::new());
        let mut state = AppState::new(store.clone(), clock.clone(), config).with_metrics(Arc::clone(&metrics));
        let mut ingest = None;
        let stop = CancellationToken::new();
        let mut jobs = JoinSet::new();
        if let Some(topology) = &topology {
            let settings = herald_broker::BrokerSettings {
                url: options.amqp_url.clone().unwrap_or_else(broker::amqp_url),
                topology: topology.topology.clone(),
                publish_channels: 4,
                confirm_timeout: Duration::from_secs(10),
                connection_name: format!("herald-test-{}", topology.topology.prefix),
            };
            let broker = herald_broker::Broker::new(settings);
            jobs.spawn(broker.clone().run(stop.clone()));
            if options.amqp_url.is_none() {
                broker.wait_connected(Duration::from_secs(15)).await.unwrap_or_else(|error| {
                    panic!(
                        "RabbitMQ is not reachable at {} ({error}); start it with `rabbitmq-server -detached`",
                        broker::amqp_url()
                    )
                });
            }
            // As in `herald api`: the jobs the intake relies on.
            jobs.spawn(until_stopped(&stop, store.clone().roll_up_reports_forever(Duration::from_secs(1))));
            jobs.spawn(until_stopped(&stop, herald_ingest::ratelimit::Limiter::purge_forever(store.clone())));
            let retention = herald_ingest::IngestSettings::default().idempotency_retention;
            jobs.spawn(until_stopped(&stop, herald_ingest::purge_expired_executions(store.clone(), retention)));
            let settings = herald_ingest::IngestSettings {
                limits: options.limits.clone(),
                lease: options.lease,
                metrics: Arc::clone(&metrics),
                fanout: options.fanout.clone(),
                ..herald_ingest::IngestSettings::default()
            };
            let created = Arc::new(herald_ingest::Ingest::new(store.clone(), broker, settings));
            // Executions must see campaign changes; wait until the change listener is up.
            for _ in 0..500 {
                if created.campaigns().is_listening() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(created.campaigns().is_listening(), "the campaign change listener did not start");
            jobs.spawn(Arc::clone(&created).run_fanouts(clock.clone() as Arc<dyn herald_core::Clock>, stop.clone()));
            state = state.with_ingest(Arc::clone(&created));
            ingest = Some(created);
        }
        jobs.spawn({
            let stop = stop.clone();
            async move {
                let _ = herald_api::serve(listener, state, stop.cancelled_owned()).await;
            }
        });
        Self {
            address,
            clock,
            store,
            key: String::new(),
            http: reqwest::Client::new(),
            ingest,
            metrics,
            options,
            stop,
            jobs,
            topology,
            database,
        }
    }

    /// The test topology; panics when the app runs without a broker.
    pub fn topology(&self) -> &broker::TestTopology {
        self.topology.as_deref().expect("spawned with a broker")
    }

    /// A new key for `sandbox` with `scopes`.
    pub async fn key_for(&self, sandbox: &str, scopes: &[Scope]) -> String {
        self.store.create_api_key(sandbox, scopes, None, Utc::now()).await.expect("create a key")
    }

    /// Sends a request with `key` (none when `None`) and returns the status and the JSON body
    /// (`Value::Null` when the body is empty).
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<&Value>) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.address));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Reply::from(request.send().await.expect("the API answers")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, Some(&self.key), None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Some(&self.key), Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::PATCH, path, Some(&self.key), Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, Some(&self.key), None).await
    }

    /// Creates a campaign from `document` and returns its id; panics unless it is created.
    pub async fn create_campaign(&self, document: &Value) -> String {
        let reply = self.post("/campaigns", document).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"].as_str().expect("an id").to_string()
    }

    /// Creates and activates a campaign; returns its id.
    pub async fn live_campaign(&self, document: &Value) -> String {
        let id = self.create_campaign(document).await;
        let reply = self.post(&format!("/campaigns/{id}/activate"), &Value::Null).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        id
    }
}

impl TestApp {
    /// Stops the server and the background work, and waits until every task of the app ended.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.jobs.join_next().await.is_some() {}
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        drain(std::mem::take(&mut self.jobs));
    }
}

/// Lets stopped jobs finish what stopping involves (closing the broker connection, whose client
/// tasks would otherwise run on) for up to 5 s, then aborts what is left. Without a runtime
/// (the test is over) the set is simply dropped, which aborts everything.
pub(crate) fn drain(mut jobs: JoinSet<()>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), async { while jobs.join_next().await.is_some() {} }).await;
        });
    }
}

/// A response: status, JSON body, and the headers a test may look at.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    async fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = response.text().await.expect("a readable body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("the body is not JSON ({status}): {text}"))
        };
        Self { status, body, content_type, headers }
    }

    /// Asserts a problem+json reply with `status` and type suffix `kind`.
    pub fn assert_problem(&self, status: StatusCode, kind: &str) -> &Self {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.content_type, "application/problem+json", "{}", self.body);
        assert_eq!(self.body["type"], format!("https://herald.dev/errors/{kind}"), "{}", self.body);
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.body);
        assert!(self.body["title"].as_str().is_some_and(|t| !t.is_empty()), "{}", self.body);
        assert!(self.body["requestId"].as_str().is_some_and(|id| !id.is_empty()), "{}", self.body);
        self
    }
}

/// An execution body for `campaign_id` with one `external` recipient per address.
pub fn execution(request_id: &str, campaign_id: &str, recipients: &[(&str, Value)]) -> Value {
    let recipients: Vec<Value> = recipients
        .iter()
        .map(|(user_id, context)| serde_json::json!({"type": "external", "userId": user_id, "context": context}))
        .collect();
    serde_json::json!({"requestId": request_id, "campaignId": campaign_id, "recipients": recipients})
}

pub mod fixtures {
    //! Campaign documents the tests start from.
    use serde_json::{Value, json};

    /// A complete password-reset email campaign that passes review.
    pub fn password_reset_email(name: &str) -> Value {
        json!({
            "name": name,
            "description": "Password reset",
            "channel": "email",
            "identityNamespace": "email",
            "surface": { "fromAddress": "no-reply@example.com", "fromName": "Example", "replyTo": "help@example.com" },
            "content": {
                "subject": "Reset your password, {{ profile.person.name.firstName | default(value='there') }}",
                "html": "<p>Hi {{ profile.person.name.firstName }},</p><p><a href=\"{{ context.resetUrl }}\">Reset</a></p>",
                "text": "Hi {{ profile.person.name.firstName }}, reset here: {{ context.resetUrl }}"
            },
            "messageTtlSeconds": 900
        })
    }

    /// A complete OTP SMS campaign.
    pub fn otp_sms(name: &str) -> Value {
        json!({
            "name": name,
            "channel": "sms",
            "identityNamespace": "phone",
            "surface": { "senderId": "Example" },
            "content": { "body": "Your code is {{ context.otp }}" },
            "messageTtlSeconds": 300
        })
    }

    /// Templates the review refuses, each of which once took a process down or bloated it:
    /// (name, template source, the code the review and the preview give it).
    pub fn hostile_templates() -> Vec<(&'static str, String, &'static str)> {
        let nested_loops =
            "{% for i in range(end=1000) %}{% for j in range(end=1000) %}{% for k in range(end=1000) %}x\
             {% endfor %}{% endfor %}{% endfor %}"
                .to_string();
        vec![
            (
                "recursive-macro",
                "{% macro boom(n) %}{{ self::boom(n=n) }}{% endmacro %}{{ self::boom(n=1) }}".into(),
                "forbidden-tag",
            ),
            ("include", "{% include \"body.txt\" %}".into(), "forbidden-tag"),
            ("billion-iterations", nested_loops, "render-budget"),
            (
                "replace-bomb",
                format!(
                    "{{% set a = \"{}\" %}}{{{{ a{} }}}}",
                    "a".repeat(62),
                    " | replace(from=\"a\", to=a)".repeat(5)
                ),
                "render-budget",
            ),
        ]
    }
}

/// Replaces `path` of a campaign's live definition in the database, as no API allows (so that
/// content the review refuses can be tested behind its back), and tells the caches as every
/// campaign change does.
pub async fn force_live(
    client: &tokio_postgres::Client,
    campaign: &str,
    path: &[&str],
    value: Value,
) -> Result<(), tokio_postgres::Error> {
    let id = uuid::Uuid::parse_str(campaign).expect("a campaign id");
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    let updated = client
        .execute(
            "UPDATE campaign_versions SET definition = jsonb_set(definition, $3, $1)
              WHERE id = (SELECT live_version_id FROM campaigns WHERE id = $2)",
            &[&value, &id, &path],
        )
        .await?;
    assert_eq!(updated, 1, "campaign {campaign} has no live version");
    client.execute("SELECT pg_notify('herald_campaign_changes', $1)", &[&campaign]).await?;
    Ok(())
}
