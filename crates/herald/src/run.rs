//! The subcommands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backon::{ExponentialBuilder, Retryable};
use herald_api::{ApiConfig, AppState};
use herald_core::Channel;
use herald_core::delivery::RetryPolicy;
use herald_core::{Clock, SystemClock};
use herald_ingest::broker::{Broker, BrokerSettings};
use herald_ingest::{Ingest, IngestSettings};
use herald_store::{Store, StoreError};
use herald_telemetry::Metrics;
use herald_worker::consumer::{self, ConsumerSettings};
use herald_worker::pipeline::{Pipeline, PipelineSettings};
use herald_worker::providers::Provider;
use herald_worker::providers::aws::{AwsProvider, AwsSettings, load_config};
use herald_worker::providers::outbox::OutboxProvider;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{
    ApiArgs, CampaignCommand, Cli, Command, DatabaseArgs, DevArgs, DlqCommand, DlqListArgs, DlqReplayArgs, KeysCommand,
    ProviderKind, StartupArgs, WorkerArgs, WorkerTuning,
};

/// Start-up waits: quick first retries for a database that is just starting, capped so a long
/// outage is polled every few seconds until `HERALD_DATABASE_WAIT_SECONDS` runs out.
const STARTUP_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(200))
    .with_max_delay(Duration::from_secs(5))
    .with_factor(2.0)
    .with_jitter()
    .without_max_times();

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate(database) => migrate(&database).await,
        Command::Api(args) => api(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Dev(args) => dev(args).await,
        Command::Campaign(CampaignCommand::Apply(args)) => crate::apply::apply(args).await,
        Command::Probe(args) => probe(&args.url).await,
        Command::Keys(KeysCommand::Create(args)) => crate::keys::create(args).await,
        Command::Keys(KeysCommand::List(args)) => crate::keys::list(args).await,
        Command::Keys(KeysCommand::Revoke(args)) => crate::keys::revoke(args).await,
        Command::Keys(KeysCommand::Rotate(args)) => crate::keys::rotate(args).await,
        Command::Dlq(DlqCommand::List(args)) => dlq_list(args).await,
        Command::Dlq(DlqCommand::Replay(args)) => dlq_replay(args).await,
    }
}

fn store(database: &DatabaseArgs) -> anyhow::Result<Store> {
    Store::connect(database.database_url.expose(), database.database_pool_size).context("configuring the database pool")
}

async fn migrate(database: &DatabaseArgs) -> anyhow::Result<()> {
    let applied = store(database)?.migrate().await.context("applying migrations")?;
    tracing::info!(?applied, latest = Store::latest_migration(), "database schema is up to date");
    Ok(())
}

/// Connects to the database, waiting for it with backoff (in compose or Kubernetes it may come
/// up after us), and applies migrations when configured to.
async fn start(startup: &StartupArgs) -> anyhow::Result<Store> {
    let store = store(&startup.database)?;
    let deadline = Instant::now() + Duration::from_secs(startup.database_wait_seconds);
    let ready =
        || async { if startup.migrate_on_start { store.migrate().await.map(drop) } else { store.ping().await } };
    ready
        .retry(STARTUP_BACKOFF)
        .when(|error| matches!(error, StoreError::Unavailable(_)) && Instant::now() < deadline)
        .notify(|error, delay| tracing::warn!(%error, retry_in = ?delay, "database not ready"))
        .await
        .context("preparing the database at start-up")?;
    Ok(store)
}

/// A stop flag that SIGTERM/SIGINT sets; the roles of a process also set it when one of them
/// ends, so that the others stop too instead of running on half-broken.
fn stop_on_signal() -> (Arc<watch::Sender<bool>>, watch::Receiver<bool>) {
    let (stop, stopped) = watch::channel(false);
    let stop = Arc::new(stop);
    let on_signal = Arc::clone(&stop);
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.send_replace(true);
    });
    (stop, stopped)
}

/// Resolves once `stopped` turns true.
async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stopped| *stopped).await;
}

/// Runs `role`, then stops the process's other roles, whether it ended well or not.
async fn then_stop<T>(stop: &watch::Sender<bool>, role: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let outcome = role.await;
    if let Err(error) = &outcome {
        tracing::error!(error = format!("{error:#}"), "stopping the process");
    }
    stop.send_replace(true);
    outcome
}

async fn api(args: ApiArgs) -> anyhow::Result<()> {
    tracing::info!(settings = ?args, "starting api");
    let store = start(&args.startup).await?;
    let (_stop, stopped) = stop_on_signal();
    serve_api(&args, store, stopped, Arc::default()).await
}

/// Serves the HTTP API until `stop` turns true.
async fn serve_api(
    args: &ApiArgs,
    store: Store,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Some(key) = &args.bootstrap_api_key {
        crate::keys::register_bootstrap(&store, &args.bootstrap_sandbox, key.expose(), clock.now()).await?;
    }
    let broker = Broker::start(BrokerSettings {
        url: args.startup.broker.amqp_url.expose().to_string(),
        topology: args.startup.broker.topology(),
        publish_channels: args.publish_channels,
        confirm_timeout: Duration::from_millis(args.confirm_timeout_ms),
        connection_name: "herald-api".into(),
    });
    let ingest = Ingest::new(
        store.clone(),
        broker,
        IngestSettings {
            limits: args.limits(),
            lease: Duration::from_secs(args.ingest_lease_seconds.max(1)),
            metrics: Arc::clone(&metrics),
            ..IngestSettings::default()
        },
    );
    let listener = TcpListener::bind(args.http_addr).await.with_context(|| format!("binding {}", args.http_addr))?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", listener.local_addr().unwrap_or(args.http_addr)));
    let config = ApiConfig { max_body_bytes: args.max_body_bytes, public_url };
    tracing::info!(addr = %args.http_addr, "api listening");
    let state = AppState::new(store, clock, config).with_ingest(Arc::new(ingest)).with_metrics(metrics);
    herald_api::serve(listener, state, until(stop)).await.context("serving http")?;
    tracing::info!("api stopped");
    Ok(())
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    tracing::info!(settings = ?args, "starting worker");
    let store = start(&args.startup).await?;
    let (stop, stopped) = stop_on_signal();
    let metrics = Arc::new(Metrics::new());
    let listener =
        TcpListener::bind(args.metrics_addr).await.with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(args.metrics_addr), "worker metrics listening");
    let served = then_stop(&stop, async {
        herald_api::serve_metrics(listener, Arc::clone(&metrics), until(stopped.clone()))
            .await
            .context("serving metrics")
    });
    let worked =
        then_stop(&stop, run_worker(&args.tuning, &args.startup, store, stopped.clone(), Arc::clone(&metrics)));
    let (worked, served) = tokio::join!(worked, served);
    served.and(worked)
}

/// The API and a worker in one process, sharing the database pool and the shutdown signal.
async fn dev(args: DevArgs) -> anyhow::Result<()> {
    tracing::info!(settings = ?args, "starting api and worker (dev)");
    if args.worker.provider == ProviderKind::Outbox {
        tracing::warn!(path = %args.worker.outbox_path.display(), "provider is the outbox: messages are written to a file, not delivered");
    }
    let store = start(&args.api.startup).await?;
    let (stop, stopped) = stop_on_signal();
    // One registry: the API's /metrics shows the worker's metrics too.
    let metrics = Arc::new(Metrics::new());
    let worker = then_stop(
        &stop,
        run_worker(&args.worker, &args.api.startup, store.clone(), stopped.clone(), Arc::clone(&metrics)),
    );
    let served = then_stop(&stop, serve_api(&args.api, store, stopped, metrics));
    let (served, worked) = tokio::join!(served, worker);
    served.and(worked)
}

async fn provider(tuning: &WorkerTuning) -> Arc<dyn Provider> {
    match tuning.provider {
        ProviderKind::Aws => {
            let settings = AwsSettings {
                call_timeout: Duration::from_millis(tuning.provider_timeout_ms.max(1)),
                ..AwsSettings::default()
            };
            Arc::new(AwsProvider::new(&load_config(&settings).await))
        }
        ProviderKind::Outbox => Arc::new(OutboxProvider::new(&tuning.outbox_path)),
    }
}

/// Consumes and sends until `stop` turns true.
async fn run_worker(
    tuning: &WorkerTuning,
    startup: &StartupArgs,
    store: Store,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let channels = tuning.worker_channels.clone();
    let topology = startup.broker.topology();
    let mut policy = RetryPolicy::standard(topology.retry_tiers.clone());
    policy.max_attempts = tuning.max_attempts;
    let pipeline = Arc::new(Pipeline::new(
        store,
        provider(tuning).await,
        Arc::new(SystemClock),
        PipelineSettings {
            policy,
            stale_claim: chrono::Duration::seconds(i64::try_from(tuning.stale_claim_seconds).unwrap_or(i64::MAX)),
            database_pause: Duration::from_secs(2),
            channel_rates: vec![
                (Channel::Email, tuning.email_rate_per_sec),
                (Channel::Sms, tuning.sms_rate_per_sec),
                (Channel::Push, tuning.push_rate_per_sec),
            ],
            metrics,
        },
    ));
    let settings = ConsumerSettings {
        amqp_url: startup.broker.amqp_url.expose().to_string(),
        topology,
        channels,
        prefetch: tuning.worker_prefetch,
        concurrency: tuning.worker_concurrency,
        grace: Duration::from_secs(tuning.worker_grace_seconds),
    };
    consumer::run(Arc::clone(&pipeline), settings, stop).await;
    tracing::info!(sent = pipeline.sent_count(), "worker stopped");
    Ok(())
}

async fn dlq_list(args: DlqListArgs) -> anyhow::Result<()> {
    let store = store(&args.database)?;
    let letters = store
        .list_dead_letters(args.sandbox.as_deref(), args.campaign, args.reason.as_deref(), args.limit)
        .await
        .context("listing dead letters")?;
    for letter in &letters {
        let mut line = herald_api::dead_letters::view(letter);
        line["sandbox"] = serde_json::json!(letter.sandbox);
        println!("{line}");
    }
    Ok(())
}

async fn dlq_replay(args: DlqReplayArgs) -> anyhow::Result<()> {
    let store = store(&args.database)?;
    let broker = Broker::start_and_wait(
        BrokerSettings {
            url: args.broker.amqp_url.expose().to_string(),
            topology: args.broker.topology(),
            publish_channels: 1,
            confirm_timeout: Duration::from_secs(10),
            connection_name: "herald-dlq".into(),
        },
        Duration::from_secs(15),
    )
    .await
    .context("connecting to the broker")?;
    for id in args.ids {
        let outcome = herald_ingest::replay::replay_dead_letter(&store, &broker, None, id, SystemClock.now())
            .await
            .with_context(|| format!("replaying {id}"))?;
        println!("{}", serde_json::json!({ "id": id, "outcome": format!("{outcome:?}") }));
    }
    Ok(())
}

async fn probe(url: &str) -> anyhow::Result<()> {
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(3)).build().context("building an http client")?;
    let status = client.get(url).send().await.with_context(|| format!("probing {url}"))?.status();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}
