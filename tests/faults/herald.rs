//! Real `herald api` and `herald worker` processes for one scenario: started with the scenario's
//! settings, killed (-9), terminated (SIGTERM) and restarted with the same settings, their stderr
//! appended to one log file each.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The all-scopes key every scenario's API registers at start-up (sandbox `default`).
pub(crate) const API_KEY: &str = "hk_fault_suite_only";

/// The `herald` binary: `HERALD_BIN`, else the one cargo built next to this test's `deps/`.
pub(crate) fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("HERALD_BIN") {
        let path = PathBuf::from(path);
        assert!(path.exists(), "HERALD_BIN={} does not exist", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/debug/deps/faults-<hash> → target/debug/herald
    let path = exe.parent().and_then(Path::parent).map(|dir| dir.join("herald")).expect("a target directory");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p herald` (or point HERALD_BIN at a herald binary)",
        path.display()
    );
    path
}

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

/// One herald process, restartable with the same settings.
#[derive(Debug)]
pub(crate) struct HeraldProcess {
    /// e.g. `worker-a`, for messages and the log file name.
    pub(crate) name: String,
    args: Vec<String>,
    environment: Vec<(String, String)>,
    /// Where `GET` answers 200 once the process is up.
    ready_url: String,
    pub(crate) log: PathBuf,
    child: Option<Child>,
}

impl HeraldProcess {
    fn new(name: &str, args: &[&str], environment: Vec<(String, String)>, ready_url: String, logs: &Path) -> Self {
        Self {
            name: name.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            environment,
            ready_url,
            log: logs.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts the process (again), appending its stderr to its log file.
    pub(crate) fn spawn(&mut self) {
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open a process log");
        use std::io::Write;
        let _ = writeln!(log, "---- faults: starting {} ----", self.name);
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

    /// Waits until the process answers on its health or metrics URL.
    pub(crate) async fn wait_ready(&mut self, within: Duration) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an http client");
        let started = Instant::now();
        loop {
            if let Ok(response) = http.get(&self.ready_url).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!("herald {} exited at start-up ({status}); see {}", self.name, self.log.display());
            }
            assert!(
                started.elapsed() < within,
                "herald {} not ready at {} after {within:?}; see {}",
                self.name,
                self.ready_url,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The running process's id; `None` once it has exited (or was never started).
    pub(crate) fn pid(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (through `kill(1)`: the workspace forbids `unsafe`, so no libc).
    pub(crate) fn sigterm(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if started.elapsed() >= within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `within`.
    pub(crate) async fn stop(&mut self, within: Duration) {
        self.sigterm();
        if self.wait_exit(within).await.is_none() {
            self.kill9();
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        self.kill9();
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
