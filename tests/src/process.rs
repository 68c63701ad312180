//! Real `herald` processes for the suites that run them (the fault suite, the fan-out
//! scenarios, benchmarks): started with an environment of their own, killed (-9), terminated
//! (SIGTERM) and restarted with the same settings, their stderr appended to one log file each.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs `path` as herald from now on (a benchmark's release build); the first call wins.
pub fn set_binary(path: PathBuf) {
    let _ = BINARY.set(path);
}

/// The `herald` binary: [`set_binary`]'s, `HERALD_BIN`, else the one cargo built next to this
/// test's `deps/`.
pub fn binary() -> PathBuf {
    if let Some(path) = BINARY.get() {
        return path.clone();
    }
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

/// One herald process, restartable with the same settings.
#[derive(Debug)]
pub struct HeraldProcess {
    /// e.g. `worker-a`, for messages and the log file name.
    pub name: String,
    args: Vec<String>,
    environment: Vec<(String, String)>,
    /// Where `GET` answers 200 once the process is up.
    ready_url: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl HeraldProcess {
    pub fn new(name: &str, args: &[&str], environment: Vec<(String, String)>, ready_url: String, logs: &Path) -> Self {
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
    pub fn spawn(&mut self) {
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
    pub async fn wait_ready(&mut self, within: Duration) {
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
    pub fn pid(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (through `kill(1)`: the workspace forbids `unsafe`, so no libc).
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
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
    pub async fn stop(&mut self, within: Duration) {
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
