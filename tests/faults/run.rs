//! The plumbing every scenario shares: a fresh database and queue prefix, the herald processes,
//! the campaign, the load, the queue sampler, then the drain and the accounting.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::accounting::{self, Evidence, Expect, Probe, Report, Sampler};
use crate::client::{ApiClient, Load, RequestRecord};
use crate::fake_ses::{Behaviour, FakeSes, MarkerCalls};
use crate::herald::{Settings, Stack};
use herald_tests::postgres::PgCluster;
use herald_tests::rabbit::RabbitNode;

/// What the whole suite shares: the private broker and database, the fake provider, the logs.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) node: Arc<Mutex<RabbitNode>>,
    pub(crate) pg: Arc<Mutex<PgCluster>>,
    pub(crate) fake: FakeSes,
    pub(crate) logs: PathBuf,
    /// HERALD_FAULTS_LONG=1: more messages per scenario.
    pub(crate) long: bool,
}

impl Env {
    /// Scales a message count for long runs.
    pub(crate) fn messages(&self, short: usize) -> usize {
        if self.long { short * 5 } else { short }
    }

    /// Runs a blocking operation on the broker node (rabbitmqctl) off the runtime's threads.
    pub(crate) async fn with_node<T: Send + 'static>(
        &self,
        action: impl FnOnce(&mut RabbitNode) -> T + Send + 'static,
    ) -> T {
        let node = Arc::clone(&self.node);
        tokio::task::spawn_blocking(move || action(&mut node.lock().unwrap()))
            .await
            .expect("a broker operation panicked")
    }

    /// Runs a blocking operation on the database cluster (pg_ctl) off the runtime's threads.
    pub(crate) async fn with_pg<T: Send + 'static>(
        &self,
        action: impl FnOnce(&mut PgCluster) -> T + Send + 'static,
    ) -> T {
        let pg = Arc::clone(&self.pg);
        tokio::task::spawn_blocking(move || action(&mut pg.lock().unwrap()))
            .await
            .expect("a database operation panicked")
    }
}

/// A scenario's settings; [`Spec::new`] gives the defaults each scenario adjusts.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) markers: Vec<String>,
    pub(crate) concurrency: usize,
    /// Executions per second the client sends at most (none: as fast as the API accepts).
    pub(crate) rate_per_sec: Option<f64>,
    pub(crate) retry_tiers: &'static str,
    pub(crate) stale_claim_seconds: u64,
    pub(crate) grace_seconds: u64,
    pub(crate) max_attempts: u32,
    pub(crate) provider_timeout_ms: u64,
    pub(crate) ingest_lease_seconds: u64,
    pub(crate) behaviour: Behaviour,
    /// How long after the last 202 everything must be final and every queue empty.
    pub(crate) settle_within: Duration,
    /// How long one request id may be retried before the client gives up.
    pub(crate) request_deadline: Duration,
    /// How long the whole load may last; requests not sent by then are reported, not tried.
    pub(crate) load_deadline: Duration,
}

impl Spec {
    /// `messages` executions with markers `NAME-00000`…; short retry tiers, a provider that
    /// answers 200 at once, and Herald's other defaults.
    pub(crate) fn new(name: &'static str, messages: usize) -> Self {
        Self {
            name,
            markers: (0..messages).map(|n| format!("{name}-{n:05}")).collect(),
            concurrency: 16,
            rate_per_sec: None,
            retry_tiers: "1,2,4",
            stale_claim_seconds: 10,
            grace_seconds: 25,
            max_attempts: 12,
            provider_timeout_ms: 10_000,
            ingest_lease_seconds: 5,
            behaviour: Behaviour::default(),
            settle_within: Duration::from_secs(60),
            request_deadline: Duration::from_secs(120),
            load_deadline: Duration::from_secs(180),
        }
    }
}

/// A scenario under way.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) spec: Spec,
    pub(crate) stack: Stack,
    pub(crate) api: ApiClient,
    pub(crate) campaign: String,
    pub(crate) probe: Arc<Probe>,
    pub(crate) sampler: Option<Sampler>,
    load: Option<Load>,
    load_started: Instant,
    /// The report being filled; scenarios add notes and their own violations.
    pub(crate) report: Report,
}

impl Run {
    /// Prepares everything and starts the load.
    pub(crate) async fn begin(env: &Env, spec: Spec) -> Self {
        env.fake.reset();
        env.fake.set(spec.behaviour.clone());
        let tag = format!("{}_{}", spec.name.replace('-', "_"), std::process::id());
        let database = format!("faults_{tag}");
        let (database_url, admin_url) = {
            let pg = env.pg.lock().unwrap();
            (pg.url(&database), pg.url("postgres"))
        };
        let amqp_url = env.node.lock().unwrap().amqp_url();
        herald_tests::postgres::create_database(&admin_url, &database).await;
        let prefix = format!("faults-{}", tag.replace('_', "-"));
        let settings = Settings {
            database_url: database_url.clone(),
            amqp_url: amqp_url.clone(),
            prefix: prefix.clone(),
            ses_url: env.fake.url.clone(),
            retry_tiers: spec.retry_tiers.into(),
            stale_claim_seconds: spec.stale_claim_seconds,
            grace_seconds: spec.grace_seconds,
            max_attempts: spec.max_attempts,
            provider_timeout_ms: spec.provider_timeout_ms,
            ingest_lease_seconds: spec.ingest_lease_seconds,
        };
        // One log directory per scenario, so each process log tells one story.
        let logs = env.logs.join(spec.name);
        std::fs::create_dir_all(&logs).expect("create the scenario's log directory");
        let stack = Stack::start(settings, &logs).await;
        let api = ApiClient::new(&stack.api_url);
        let campaign = api.create_campaign(&format!("fault suite {}", spec.name)).await;
        let queues = discover_queues(env, &prefix, spec.retry_tiers).await;
        let probe = Arc::new(Probe::new(&amqp_url, &database_url, queues));
        let load = Load::start(
            api.clone(),
            campaign.clone(),
            spec.markers.clone(),
            spec.concurrency,
            spec.rate_per_sec,
            spec.request_deadline,
            // Long runs send five times as much at the same pace.
            if env.long { spec.load_deadline * 5 } else { spec.load_deadline },
        );
        let sampler = Sampler::start(Arc::clone(&probe), Arc::clone(&load.accepted), spec.concurrency);
        let mut report = Report { name: spec.name.to_string(), ..Report::default() };
        report.notes.push(format!("queues_watched={}", probe.queues.len()));
        Self {
            spec,
            stack,
            api,
            campaign,
            probe,
            sampler: Some(sampler),
            load: Some(load),
            load_started: Instant::now(),
            report,
        }
    }

    /// Where the run is, for notes on when a fault struck: `202s@seconds since the load started`.
    pub(crate) fn progress(&self) -> String {
        format!("{}@{:.1}s", self.accepted(), self.load_started.elapsed().as_secs_f64())
    }

    /// 202s so far.
    pub(crate) fn accepted(&self) -> usize {
        self.load.as_ref().map_or(0, |load| load.accepted.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Waits until `share` (0 to 1) of the messages are accepted, so a fault lands mid-run.
    /// Returns false (and notes it) if that takes longer than `within`.
    pub(crate) async fn until_accepted(&mut self, share: f64, within: Duration) -> bool {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let wanted = ((self.spec.markers.len() as f64) * share).ceil() as usize;
        let started = Instant::now();
        while self.accepted() < wanted {
            if started.elapsed() > within {
                self.report
                    .violate("the load stalled before a fault", format!("{} of {wanted} accepted", self.accepted()));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits until the provider has received `calls` requests in all (bounded by `within`).
    pub(crate) async fn until_calls(&mut self, env: &Env, calls: u64, within: Duration) -> bool {
        let started = Instant::now();
        while env.fake.total_calls() < calls {
            if started.elapsed() > within {
                self.report.violate(
                    "the workers stalled before a fault",
                    format!("{} of {calls} calls", env.fake.total_calls()),
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Waits for every request to end; returns the client's records.
    pub(crate) async fn end_load(&mut self) -> Vec<RequestRecord> {
        match self.load.take() {
            Some(load) => load.finish().await,
            None => Vec::new(),
        }
    }

    /// Waits for the system to settle (`dead_letters`: how many dead letters must be recorded),
    /// re-sends every retried request to check its execution id, judges every marker with
    /// `expect`, stops the processes, and prints the summary line.
    pub(crate) async fn finish(
        mut self,
        env: &Env,
        records: Vec<RequestRecord>,
        dead_letters: usize,
        expect: &(dyn Fn(&str, &MarkerCalls) -> Expect + Sync),
    ) -> Report {
        let drain_started = Instant::now();
        self.report.settled = accounting::settle(&self.probe, &records, dead_letters, self.spec.settle_within).await;
        self.report.drain = drain_started.elapsed();
        // A client that lost a 202 sends the request again: same execution id, nothing republished.
        let retried: Vec<RequestRecord> = records.iter().filter(|r| r.tries > 1).take(300).cloned().collect();
        for differing in crate::client::resend_and_compare(&self.api, &self.campaign, &retried).await {
            self.report.violate("a re-sent request id got another execution id", differing);
        }
        if let Some(sampler) = self.sampler.take() {
            self.report.samples = sampler.finish().await;
        }
        let evidence = Evidence {
            fake: env.fake.snapshot(),
            deliveries: self.probe.deliveries().await.unwrap_or_default(),
            executions: self.probe.executions().await.unwrap_or_default(),
            dead_letters: self.probe.dead_letters().await.unwrap_or_default(),
            records,
        };
        accounting::judge(&mut self.report, &evidence, expect);
        self.stack.stop().await;
        if self.report.violation_count() > 0 {
            self.report.notes.push(format!("logs={}", self.stack.logs().join(",")));
        }
        println!("{}", self.report.summary());
        self.report
    }

    /// The report of a scenario whose setup failed before any accounting.
    pub(crate) fn aborted(name: &str, why: String) -> Report {
        let mut report = Report { name: name.to_string(), ..Report::default() };
        report.violate("scenario aborted", why);
        report
    }
}

/// Every queue of `prefix`, read from the broker once the processes have declared their
/// topology (they do so asynchronously, after they answer their health checks): named by the
/// broker rather than computed, so that queues a newer Herald adds (shards) are watched too.
async fn discover_queues(env: &Env, prefix: &str, tiers: &str) -> Vec<String> {
    let expected = Probe::expected_queues(prefix, tiers);
    let started = Instant::now();
    loop {
        let listed = env.with_node(|node| node.queue_names()).await;
        let mut ours: Vec<String> = listed.into_iter().filter(|name| name.starts_with(&format!("{prefix}."))).collect();
        if expected.iter().all(|queue| ours.contains(queue)) || started.elapsed() > Duration::from_secs(20) {
            for queue in expected {
                if !ours.contains(&queue) {
                    ours.push(queue);
                }
            }
            ours.sort();
            return ours;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
