//! Real `herald api` and `herald worker` processes for one scenario: started with the scenario's
//! settings, killed (-9), terminated (SIGTERM) and restarted with the same settings, their stderr
//! appended to one log file each.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub(crate) use herald_tests::process::{HeraldProcess, binary};

/// The all-scopes key every scenario's API registers at start-up (sandbox `default`).
pub(crate) const API_KEY: &str = "hk_fault_suite_only";

/// Settings shared by every process of a scenario (the API and the workers must agree on the
/// topology: the broker refuses a re-declaration with other retry tiers).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) database_url: String,
    pub(crate) amqp_url: String,
    pub(crate) prefix: String,
    pub(crate) ses_url: String,
    pub(crate) retry_tiers: String,
    pub(crate) stale_claim_seconds: u64,
    pub(crate) grace_seconds: u64,
    pub(crate) max_attempts: u32,
    pub(crate) provider_timeout_ms: u64,
    pub(crate) ingest_lease_seconds: u64,
}

impl Settings {
    /// The process environment: nothing inherited but PATH, so the machine's own AWS_* or
    /// HERALD_* variables cannot leak in.
    fn environment(&self) -> Vec<(String, String)> {
        let pairs = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HERALD_DATABASE_URL", self.database_url.clone()),
            ("HERALD_AMQP_URL", self.amqp_url.clone()),
            ("HERALD_AMQP_PREFIX", self.prefix.clone()),
            ("HERALD_BOOTSTRAP_API_KEY", API_KEY.into()),
            ("HERALD_RETRY_TIERS_SECONDS", self.retry_tiers.clone()),
            ("HERALD_STALE_CLAIM_SECONDS", self.stale_claim_seconds.to_string()),
            ("HERALD_WORKER_GRACE_SECONDS", self.grace_seconds.to_string()),
            ("HERALD_MAX_ATTEMPTS", self.max_attempts.to_string()),
            // Newer settings; an older binary ignores variables it does not know.
            ("HERALD_PROVIDER_TIMEOUT_MS", self.provider_timeout_ms.to_string()),
            ("HERALD_INGEST_LEASE_SECONDS", self.ingest_lease_seconds.to_string()),
            ("HERALD_LOG", "info".into()),
            // Rate limits and quotas are not under test here: keep them out of the suite's way
            // (the client would retry a 429, but the runs would no longer be comparable).
            ("HERALD_RATE_LIMIT_PER_SEC", "100000".into()),
            ("HERALD_KEY_RATE_LIMIT_PER_SEC", "100000".into()),
            ("HERALD_EMAIL_DAILY_QUOTA", "0".into()),
            ("AWS_ENDPOINT_URL", self.ses_url.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "fault-suite".into()),
            ("AWS_SECRET_ACCESS_KEY", "fault-suite".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ];
        pairs.into_iter().map(|(name, value)| (name.to_string(), value)).collect()
    }

    /// A one-shot `herald ARGS` with these settings (e.g. `dlq replay ID...`).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command.env_clear().envs(self.environment()).args(args);
        command
    }
}

/// A scenario's processes: one API and two workers.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) settings: Settings,
    pub(crate) api: HeraldProcess,
    pub(crate) workers: Vec<HeraldProcess>,
    pub(crate) api_url: String,
}

impl Stack {
    /// Starts the API (which migrates the fresh database), then two workers.
    pub(crate) async fn start(settings: Settings, logs: &Path) -> Self {
        let http_addr = format!("127.0.0.1:{}", crate::free_port());
        let api_url = format!("http://{http_addr}");
        let mut environment = settings.environment();
        environment.push(("HERALD_HTTP_ADDR".into(), http_addr));
        let mut api = HeraldProcess::new("api", &["api"], environment, format!("{api_url}/healthz"), logs);
        api.spawn();
        api.wait_ready(Duration::from_secs(60)).await;
        let mut workers = Vec::new();
        for name in ["worker-a", "worker-b"] {
            let metrics_addr = format!("127.0.0.1:{}", crate::free_port());
            let mut environment = settings.environment();
            environment.push(("HERALD_METRICS_ADDR".into(), metrics_addr.clone()));
            let mut worker =
                HeraldProcess::new(name, &["worker"], environment, format!("http://{metrics_addr}/metrics"), logs);
            worker.spawn();
            workers.push(worker);
        }
        for worker in &mut workers {
            worker.wait_ready(Duration::from_secs(60)).await;
        }
        Self { settings, api, workers, api_url }
    }

    /// Every process's log, for failure messages.
    pub(crate) fn logs(&self) -> Vec<String> {
        std::iter::once(&self.api).chain(&self.workers).map(|p| p.log.display().to_string()).collect()
    }

    /// Stops every process (SIGTERM, then SIGKILL after 15 s).
    pub(crate) async fn stop(&mut self) {
        for worker in &self.workers {
            worker.sigterm();
        }
        self.api.sigterm();
        for worker in &mut self.workers {
            worker.stop(Duration::from_secs(15)).await;
        }
        self.api.stop(Duration::from_secs(15)).await;
    }
}
