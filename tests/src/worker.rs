//! Workers for tests: the real delivery loop and pipeline, in-process, against the test app's
//! database and topology, with a provider of the test's choosing.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Channel;
use herald_core::delivery::RetryPolicy;
use herald_worker::consumer::{self, ConsumerSettings};
use herald_worker::pipeline::{Pipeline, PipelineSettings};
use herald_worker::providers::Provider;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::TestApp;

/// Quick retries so tests see tiers and dead letters in seconds.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        in_process_attempts: 2,
        in_process_base_delay: Duration::from_millis(10),
        in_process_max_delay: Duration::from_millis(50),
        tiers: vec![Duration::from_secs(1), Duration::from_secs(2)],
        max_attempts: 6,
    }
}

#[derive(Debug)]
pub struct TestWorker {
    stop: CancellationToken,
    /// The delivery loop and the worker's report rollup, as in `herald worker`: aborted when
    /// the worker is dropped.
    jobs: JoinSet<()>,
    pub pipeline: Arc<Pipeline>,
}

impl TestWorker {
    /// Starts a worker on every channel of `app`'s topology, with `policy` (its tiers are the
    /// topology's, as in `herald worker`: one list, [`crate::TestOptions::retry_tiers`]).
    pub async fn start(app: &TestApp, provider: Arc<dyn Provider>, policy: RetryPolicy) -> Self {
        Self::start_with(app, provider, policy, 16, 100).await
    }

    /// As [`TestWorker::start`], with the delivery loop's concurrency and prefetch.
    pub async fn start_with(
        app: &TestApp,
        provider: Arc<dyn Provider>,
        policy: RetryPolicy,
        concurrency: usize,
        prefetch: u16,
    ) -> Self {
        let mut policy = policy;
        policy.tiers = app.topology().topology.retry_tiers.clone();
        let settings = PipelineSettings {
            policy,
            stale_claim: chrono::Duration::seconds(60),
            database_pause: Duration::from_millis(500),
            max_batch: 256,
            batch_writers: 2,
            channel_rates: Vec::new(),
            ses_configuration_set: None,
            metrics: Arc::clone(&app.metrics),
        };
        let pipeline = Arc::new(Pipeline::new(app.database.store(), provider, app.clock.clone(), settings));
        for _ in 0..500 {
            if pipeline.campaigns().is_listening() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pipeline.campaigns().is_listening(), "the worker's campaign change listener did not start");
        let consumer = ConsumerSettings {
            amqp_url: app.options.amqp_url.clone().unwrap_or_else(crate::broker::amqp_url),
            topology: app.topology().topology.clone(),
            channels: Channel::ALL.to_vec(),
            prefetch,
            concurrency,
            grace: Duration::from_secs(10),
            // Loopback allowed: the tests' receivers listen there.
            webhooks: Some(Arc::new(herald_worker::webhooks::Webhooks::new(
                app.database.store(),
                app.clock.clone(),
                Arc::clone(&app.metrics),
                herald_worker::webhooks::WebhookSettings {
                    allowed_networks: herald_core::feedback::ssrf::parse_networks(&["127.0.0.0/8".into()]).unwrap(),
                    max_attempts: 60,
                    timeout: Duration::from_secs(2),
                    tiers: app.topology().topology.retry_tiers.clone(),
                },
            ))),
        };
        let stop = CancellationToken::new();
        let mut jobs = JoinSet::new();
        jobs.spawn(consumer::run(Arc::clone(&pipeline), consumer, stop.clone()));
        let rollup = app.database.store().roll_up_reports_forever(Duration::from_secs(1));
        jobs.spawn(crate::until_stopped(&stop, rollup));
        Self { stop, jobs, pipeline }
    }

    /// Stops consuming, lets in-flight messages finish, and waits for every task to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), async { while self.jobs.join_next().await.is_some() {} })
            .await;
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.stop.cancel();
        crate::drain(std::mem::take(&mut self.jobs));
    }
}
