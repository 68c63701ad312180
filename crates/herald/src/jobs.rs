//! The jobs of one process, and their owner.
//!
//! Every long-running part of a process — the HTTP server, the worker's delivery loop, the broker
//! connection, the report rollup, the purges — is a job started here, once, by `run.rs`. They
//! run in one `JoinSet` under one `CancellationToken`: SIGTERM cancels the token, and so does
//! the end of any job, so that a process whose part failed stops as a whole (and its
//! orchestrator restarts it) instead of running on half-broken. Dropping the set aborts whatever
//! is still running, so nothing outlives its owner.
//!
//! `herald_background_jobs{job}` shows what runs: 1 per job, in `herald dev` as in the others.

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;
use herald_telemetry::Metrics;
use herald_telemetry::metrics::JobLabels;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Ended = (&'static str, anyhow::Result<()>);

pub(crate) struct Jobs {
    stop: CancellationToken,
    running: JoinSet<Ended>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("running", &self.running.len()).finish()
    }
}

impl Jobs {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self { stop: CancellationToken::new(), running: JoinSet::new(), metrics }
    }

    /// The token every job stops on. A part that must stop alone takes a child of it.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Starts `job`, which stops by itself once the stop token is cancelled (a server draining its
    /// requests, the delivery loop finishing its messages).
    pub(crate) fn spawn(&mut self, name: &'static str, job: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        let gauge = self.metrics.background_jobs.get_or_create(&JobLabels { job: name }).clone();
        gauge.inc();
        tracing::info!(job = name, "background job started");
        self.running.spawn(async move {
            // A panicking job ends the process like a failing one, under its own name.
            let ended = std::panic::AssertUnwindSafe(job).catch_unwind().await.unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(anyhow::anyhow!("panicked: {message}"))
            });
            gauge.dec();
            (name, ended)
        });
    }

    /// Starts `job`, a loop that never ends by itself; it is dropped when the stop token is
    /// cancelled (it holds nothing that needs closing).
    pub(crate) fn spawn_loop(&mut self, name: &'static str, job: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.spawn(name, async move {
            tokio::select! {
                () = job => Err(anyhow::anyhow!("the {name} loop ended")),
                () = stop.cancelled() => Ok(()),
            }
        });
    }

    /// Waits until the first job ends, `signal` resolves or the token is cancelled, then stops
    /// the others and waits for them. The first failure is the process's result.
    pub(crate) async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        let mut record = |(name, ended): Ended, stopping: bool| match ended {
            Err(error) => {
                tracing::error!(
                    job = name,
                    error = format!("{error:#}"),
                    "background job failed; stopping the process"
                );
                if outcome.is_ok() {
                    outcome = Err(error.context(format!("{name} failed")));
                }
            }
            Ok(()) if !stopping => tracing::info!(job = name, "background job ended; stopping the process"),
            Ok(()) => tracing::debug!(job = name, "background job stopped"),
        };
        tokio::select! {
            ended = self.running.join_next() => {
                if let Some(ended) = ended {
                    record(ended.unwrap_or_else(|panic| ("(panicked)", Err(anyhow::anyhow!("{panic}")))), false);
                }
            }
            () = self.stop.cancelled() => {}
            () = signal => {}
        }
        self.stop.cancel();
        while let Some(ended) = self.running.join_next().await {
            record(ended.unwrap_or_else(|panic| ("(panicked)", Err(anyhow::anyhow!("{panic}")))), true);
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_panicking_job_stops_the_others_and_fails_under_its_own_name() {
        let metrics = Arc::new(Metrics::new());
        let mut jobs = Jobs::new(Arc::clone(&metrics));
        let stop = jobs.stop_token();
        jobs.spawn("server", async move {
            stop.cancelled().await;
            Ok(())
        });
        jobs.spawn_loop("looping", std::future::pending());
        jobs.spawn("broken", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("boom");
        });
        let text = metrics.encode();
        assert!(text.contains(r#"herald_background_jobs{job="looping"} 1"#), "{text}");
        let failed = tokio::time::timeout(Duration::from_secs(5), jobs.run_until(std::future::pending()))
            .await
            .expect("the other jobs stopped");
        let error = format!("{:#}", failed.expect_err("a panic is a failure"));
        assert!(error.contains("broken failed") && error.contains("boom"), "{error}");
        assert!(metrics.encode().contains(r#"herald_background_jobs{job="server"} 0"#));
    }
}
