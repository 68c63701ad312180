//! The subcommands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backon::{ExponentialBuilder, Retryable};
use herald_api::feedback::SnsPushSettings;
use herald_api::{ApiConfig, AppState};
use herald_broker::{Broker, BrokerSettings};
use herald_core::Channel;
use herald_core::delivery::RetryPolicy;
use herald_core::{Clock, SystemClock};
use herald_ingest::fanout::FanoutSettings;
use herald_ingest::ratelimit::Limiter;
use herald_ingest::{Ingest, IngestSettings};
use herald_store::{Store, StoreError};
use herald_telemetry::Metrics;
use herald_worker::consumer::{self, ConsumerSettings};
use herald_worker::feedback::{SqsFeedback, SqsFeedbackSettings};
use herald_worker::pipeline::{Pipeline, PipelineSettings};
use herald_worker::providers::Provider;
use herald_worker::providers::aws::{AwsProvider, AwsSettings, load_config};
use herald_worker::providers::outbox::OutboxProvider;
use herald_worker::webhooks::{WebhookSettings, Webhooks};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;

use crate::cli::{
    ApiArgs, CampaignCommand, Cli, Command, DatabaseArgs, DevArgs, DlqCommand, DlqListArgs, DlqReplayArgs, KeysCommand,
    ProviderKind, StartupArgs, WorkerArgs, WorkerTuning,
};

/// How often the API reads the work queues' depth and consumers for its metrics.
const QUEUE_WATCH_INTERVAL: Duration = Duration::from_secs(15);

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
        Command::Execute(args) => crate::execute::execute(args).await,
        Command::Suppressions(command) => crate::feedback::suppressions(command).await,
        Command::Webhooks(command) => crate::feedback::webhooks(command).await,
        Command::Audiences(command) => crate::audiences::audiences(command).await,
        Command::Loadtest(args) => crate::loadtest::loadtest(args).await,
        Command::FakeProvider(args) => crate::loadtest::fake_provider::serve(args, shutdown_signal()).await,
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

/// `error` with what to do about it, when it is a set-up mistake the store can name.
fn explained(store: &Store, error: StoreError) -> anyhow::Error {
    match store.set_up_hint(&error) {
        Some(hint) => anyhow::anyhow!("{error}; {hint}"),
        None => anyhow::Error::new(error),
    }
}

async fn migrate(database: &DatabaseArgs) -> anyhow::Result<()> {
    let store = store(database)?;
    let applied = store.migrate().await.map_err(|error| explained(&store, error)).context("applying migrations")?;
    tracing::info!(?applied, latest = Store::latest_migration(), "database schema is up to date");
    Ok(())
}

/// Connects to the database, waiting for it with backoff (in compose or Kubernetes it may come
/// up after us), and applies migrations when configured to.
async fn start(startup: &StartupArgs) -> anyhow::Result<Store> {
    herald_broker::reconnect::check_url(startup.broker.amqp_url.expose())
        .map_err(|reason| anyhow::anyhow!("HERALD_AMQP_URL is not an AMQP URL: {reason}"))?;
    let store = store(&startup.database)?;
    let deadline = Instant::now() + Duration::from_secs(startup.database_wait_seconds);
    let ready =
        || async { if startup.migrate_on_start { store.migrate().await.map(drop) } else { store.ping().await } };
    ready
        .retry(STARTUP_BACKOFF)
        .when(|error| matches!(error, StoreError::Unavailable(_)) && Instant::now() < deadline)
        .notify(|error, delay| {
            let hint = store.set_up_hint(error);
            tracing::warn!(%error, hint, retry_in = ?delay, "database not ready");
        })
        .await
        .map_err(|error| explained(&store, error))
        .context("preparing the database at start-up")?;
    Ok(store)
}

/// Runs a start-up step unless SIGTERM or Ctrl-C comes first (then `None`: the process exits
/// cleanly, as it does once running).
async fn unless_stopped<T>(step: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<Option<T>> {
    tokio::select! {
        done = step => done.map(Some),
        () = shutdown_signal() => Ok(None),
    }
}

async fn api(args: ApiArgs) -> anyhow::Result<()> {
    tracing::info!(settings = ?args, "starting api");
    let Some(store) = unless_stopped(start(&args.startup)).await? else { return Ok(()) };
    let metrics = Arc::new(Metrics::new());
    let mut jobs = Jobs::new(Arc::clone(&metrics));
    start_api(&args, store.clone(), metrics, &mut jobs).await?;
    start_rollup(&args.startup, &store, &mut jobs);
    jobs.run_until(shutdown_signal()).await
}

/// Starts the HTTP API and what it needs (the broker connection, the purges) into `jobs`.
async fn start_api(args: &ApiArgs, store: Store, metrics: Arc<Metrics>, jobs: &mut Jobs) -> anyhow::Result<()> {
    // Before any job starts: a port in use ends start-up with nothing to stop.
    let listener = TcpListener::bind(args.http_addr).await.with_context(|| format!("binding {}", args.http_addr))?;
    // Settings that can be wrong, read before anything starts: a mistake ends start-up cleanly.
    let topics: Vec<String> =
        args.feedback_sns_topic_arns.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    let origin = sns_origin(&args.sns_origin_pattern)?;
    let sns = (!topics.is_empty()).then(|| SnsPushSettings { topics, origin });
    let webhook_allowed_networks = args.startup.webhook_networks()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Some(key) = &args.bootstrap_api_key {
        crate::keys::register_bootstrap(&store, &args.bootstrap_sandbox, key.expose(), clock.now()).await?;
    }
    let broker = Broker::new(BrokerSettings {
        url: args.startup.broker.amqp_url.expose().to_string(),
        topology: args.startup.broker.topology(),
        publish_channels: args.publish_channels,
        confirm_timeout: Duration::from_millis(args.confirm_timeout_ms),
        connection_name: "herald-api".into(),
    });
    // Its own token, cancelled once the server has drained: requests still being answered
    // during a shutdown keep their broker.
    let broker_stop = CancellationToken::new();
    jobs.spawn("broker-connection", {
        let (broker, stop) = (broker.clone(), broker_stop.clone());
        async move {
            broker.run(stop).await;
            Ok(())
        }
    });
    let settings = IngestSettings {
        limits: args.limits(),
        lease: Duration::from_secs(args.ingest_lease_seconds.max(1)),
        max_batch: usize::try_from(args.ingest_batch_size).unwrap_or(256),
        batch_workers: usize::try_from(args.ingest_batch_writers).unwrap_or(1),
        idempotency_retention: Duration::from_secs(args.idempotency_retention_hours * 3600),
        metrics: Arc::clone(&metrics),
        fanout: FanoutSettings {
            page_size: args.fanout_page_size,
            queue_limit: args.fanout_queue_limit,
            lease: Duration::from_secs(args.fanout_lease_seconds),
            window: Duration::from_secs(args.fanout_window_seconds),
            poll: Duration::from_millis(args.fanout_poll_ms),
            concurrency: usize::try_from(args.fanout_concurrency).unwrap_or(4),
        },
    };
    jobs.spawn_loop(
        "execution-purge",
        herald_ingest::purge_expired_executions(store.clone(), settings.idempotency_retention),
    );
    jobs.spawn_loop("rate-limit-purge", Limiter::purge_forever(store.clone()));
    jobs.spawn_loop("queue-watch", {
        let metrics = Arc::clone(&metrics);
        broker.clone().watch_queues(QUEUE_WATCH_INTERVAL, move |channel, queue, held| {
            metrics.queue_state(channel.as_str(), queue, held.map(|h| (h.messages, h.consumers)));
        })
    });
    let ingest = Arc::new(Ingest::new(store.clone(), broker, settings));
    // Stops publishing with the process; its leases are given up for another instance.
    jobs.spawn("audience-fanout", {
        let (ingest, clock, stop) = (Arc::clone(&ingest), Arc::clone(&clock), jobs.stop_token());
        async move {
            ingest.run_fanouts(clock, stop).await;
            Ok(())
        }
    });
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", listener.local_addr().unwrap_or(args.http_addr)));
    let config = ApiConfig { max_body_bytes: args.max_body_bytes, public_url, sns, webhook_allowed_networks };
    tracing::info!(addr = %args.http_addr, "api listening");
    let state = AppState::new(store, clock, config).with_ingest(ingest).with_metrics(metrics);
    let stop = jobs.stop_token();
    jobs.spawn("http", async move {
        let served = herald_api::serve(listener, state, stop.cancelled_owned()).await.context("serving http");
        broker_stop.cancel();
        tracing::info!("api stopped");
        served
    });
    Ok(())
}

/// `HERALD_SNS_ORIGIN_PATTERN`, refused when it would trust any origin: an empty pattern (or one
/// like `.*`) would let anyone's certificate sign "SNS" messages.
fn sns_origin(pattern: &str) -> anyhow::Result<regex::Regex> {
    if pattern.trim().is_empty() {
        bail!("HERALD_SNS_ORIGIN_PATTERN is empty; unset it for the default (https://sns.<region>.amazonaws.com)");
    }
    let origin = regex::Regex::new(pattern).context("HERALD_SNS_ORIGIN_PATTERN is not a regex")?;
    // Origins no SNS certificate is served from: a pattern matching one would match others too.
    let foreign = [
        "https://herald-canary.invalid",
        "http://127.0.0.1:1",
        "https://sns.us-east-1.amazonaws.com.herald-canary.invalid",
        "http://sns.us-east-1.amazonaws.com",
    ];
    if foreign.iter().any(|origin_text| origin.is_match(origin_text)) {
        bail!(
            "HERALD_SNS_ORIGIN_PATTERN matches any origin; anchor it (^...$) to the hosts that serve SNS certificates"
        );
    }
    Ok(origin)
}

/// The report rollup: one loop per process (it shares the work with other processes).
fn start_rollup(startup: &StartupArgs, store: &Store, jobs: &mut Jobs) {
    let interval = Duration::from_millis(startup.report_rollup_interval_ms);
    jobs.spawn_loop("report-rollup", store.clone().roll_up_reports_forever(interval));
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    tracing::info!(settings = ?args, "starting worker");
    let Some(store) = unless_stopped(start(&args.startup)).await? else { return Ok(()) };
    let metrics = Arc::new(Metrics::new());
    let mut jobs = Jobs::new(Arc::clone(&metrics));
    let listener =
        TcpListener::bind(args.metrics_addr).await.with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(args.metrics_addr), "worker metrics listening");
    let stop = jobs.stop_token();
    jobs.spawn("metrics-http", {
        let metrics = Arc::clone(&metrics);
        async move { herald_api::serve_metrics(listener, metrics, stop.cancelled_owned()).await.context("serving metrics") }
    });
    start_worker(&args.tuning, &args.startup, store.clone(), metrics, &mut jobs).await?;
    start_rollup(&args.startup, &store, &mut jobs);
    jobs.run_until(shutdown_signal()).await
}

/// The API and a worker in one process, sharing the database pool, the metrics registry (the
/// API's /metrics shows the worker's too), the jobs and their stop.
async fn dev(args: DevArgs) -> anyhow::Result<()> {
    tracing::info!(settings = ?args, "starting api and worker (dev)");
    if args.worker.provider == ProviderKind::Outbox {
        tracing::warn!(path = %args.worker.outbox_path.display(), "provider is the outbox: messages are written to a file, not delivered");
    }
    let Some(store) = unless_stopped(start(&args.api.startup)).await? else { return Ok(()) };
    let metrics = Arc::new(Metrics::new());
    let mut jobs = Jobs::new(Arc::clone(&metrics));
    start_worker(&args.worker, &args.api.startup, store.clone(), Arc::clone(&metrics), &mut jobs).await?;
    start_api(&args.api, store.clone(), metrics, &mut jobs).await?;
    start_rollup(&args.api.startup, &store, &mut jobs);
    jobs.run_until(shutdown_signal()).await
}

async fn provider(tuning: &WorkerTuning) -> Arc<dyn Provider> {
    match tuning.provider {
        ProviderKind::Aws => {
            let settings = AwsSettings {
                call_timeout: Duration::from_millis(tuning.provider_timeout_ms.max(1)),
                connect_timeout: Duration::from_millis(tuning.provider_connect_timeout_ms.max(1)),
                ..AwsSettings::default()
            };
            Arc::new(AwsProvider::new(&load_config(&settings).await))
        }
        ProviderKind::Outbox => Arc::new(OutboxProvider::new(&tuning.outbox_path)),
    }
}

/// Starts the delivery loop, which consumes and sends until the jobs stop.
async fn start_worker(
    tuning: &WorkerTuning,
    startup: &StartupArgs,
    store: Store,
    metrics: Arc<Metrics>,
    jobs: &mut Jobs,
) -> anyhow::Result<()> {
    let channels = tuning.worker_channels.clone();
    let topology = startup.broker.topology();
    let mut policy = RetryPolicy::standard(topology.retry_tiers.clone());
    policy.max_attempts = tuning.max_attempts;
    let store_for_feedback = store.clone();
    let webhooks = Webhooks::new(
        store.clone(),
        Arc::new(SystemClock),
        Arc::clone(&metrics),
        WebhookSettings {
            allowed_networks: startup.webhook_networks()?,
            max_attempts: tuning.webhook_max_attempts,
            timeout: Duration::from_millis(tuning.webhook_timeout_ms),
            tiers: topology.retry_tiers.clone(),
        },
    );
    let pipeline = Arc::new(Pipeline::new(
        store,
        provider(tuning).await,
        Arc::new(SystemClock),
        PipelineSettings {
            policy,
            stale_claim: chrono::Duration::seconds(i64::try_from(tuning.stale_claim_seconds).unwrap_or(i64::MAX)),
            database_pause: Duration::from_millis(tuning.database_pause_ms),
            max_batch: usize::try_from(tuning.worker_batch_size).unwrap_or(256),
            batch_writers: usize::try_from(tuning.worker_batch_writers).unwrap_or(1),
            channel_rates: vec![
                (Channel::Email, tuning.email_rate_per_sec),
                (Channel::Sms, tuning.sms_rate_per_sec),
                (Channel::Push, tuning.push_rate_per_sec),
            ],
            ses_configuration_set: tuning.ses_configuration_set.clone(),
            metrics: Arc::clone(&metrics),
        },
    ));
    if let Some(queue_url) = &tuning.feedback_sqs_queue_url {
        start_sqs_feedback(tuning, queue_url, store_for_feedback, metrics, jobs).await;
    }
    let settings = ConsumerSettings {
        amqp_url: startup.broker.amqp_url.expose().to_string(),
        topology,
        channels,
        prefetch: tuning.worker_prefetch,
        concurrency: tuning.worker_concurrency,
        grace: Duration::from_secs(tuning.worker_grace_seconds),
        webhooks: Some(Arc::new(webhooks)),
    };
    let stop = jobs.stop_token();
    jobs.spawn("delivery", async move {
        consumer::run(Arc::clone(&pipeline), settings, stop).await;
        tracing::info!(sent = pipeline.sent_count(), "worker stopped");
        Ok(())
    });
    Ok(())
}

/// The SES feedback consumer of `HERALD_FEEDBACK_SQS_QUEUE_URL`, with the standard AWS
/// configuration (the same as the provider's).
async fn start_sqs_feedback(
    tuning: &WorkerTuning,
    queue_url: &str,
    store: Store,
    metrics: Arc<Metrics>,
    jobs: &mut Jobs,
) {
    let config = load_config(&AwsSettings::default()).await;
    let settings = SqsFeedbackSettings {
        queue_url: queue_url.to_string(),
        wait_seconds: 20,
        retention: chrono::Duration::days(i64::try_from(tuning.feedback_retention_days).unwrap_or(14)),
        pollers: usize::from(tuning.feedback_sqs_pollers),
    };
    let consumer = SqsFeedback::new(&config, store, Arc::new(SystemClock), metrics, settings);
    let stop = jobs.stop_token();
    jobs.spawn("feedback-sqs", async move {
        consumer.run(stop).await;
        Ok(())
    });
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
    let broker = Broker::new(BrokerSettings {
        url: args.broker.amqp_url.expose().to_string(),
        topology: args.broker.topology(),
        publish_channels: 1,
        confirm_timeout: Duration::from_secs(10),
        connection_name: "herald-dlq".into(),
    });
    let stop = CancellationToken::new();
    let connection = tokio::spawn(broker.clone().run(stop.clone()));
    // Stops the connection however this ends.
    let _stop_connection = stop.clone().drop_guard();
    broker.wait_connected(Duration::from_secs(15)).await.context("connecting to the broker")?;
    for id in args.ids {
        let outcome = herald_broker::replay::replay_dead_letter(&store, &broker, None, id, SystemClock.now())
            .await
            .with_context(|| format!("replaying {id}"))?;
        println!("{}", serde_json::json!({ "id": id, "outcome": format!("{outcome:?}") }));
    }
    stop.cancel();
    let _ = connection.await;
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
