//! The command line and its configuration. Every setting is a flag with a `HERALD_*`
//! environment variable and a default, declared once here: `herald --help` documents them and
//! the tests check `docker-compose.yml` against this list, so the two cannot drift.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "API-triggered transactional messaging: email, SMS and push")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub logging: LoggingArgs,
}

// Parsed once per process: the size of the largest variant (`herald dev`'s settings) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Serve the HTTP API (management and execution).
    Api(ApiArgs),
    /// Consume queued messages and send them.
    Worker(WorkerArgs),
    /// Run the API and a worker together in one process (local development).
    Dev(DevArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List and replay dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Manage campaigns through a running API.
    #[command(subcommand)]
    Campaign(CampaignCommand),
    /// Send one message through a running API and follow its status until it is final.
    Execute(ExecuteArgs),
    /// List, add and remove suppressed addresses of the key's sandbox, through a running API.
    #[command(subcommand)]
    Suppressions(SuppressionsCommand),
    /// Set, show or remove the key's sandbox's feedback webhook, through a running API.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Create, upload and list the key's sandbox's audiences, through a running API.
    #[command(subcommand)]
    Audiences(AudiencesCommand),
    /// Executions at a constant rate (or as fast as answered) against a running API, and what a
    /// `herald fake-provider` received from the workers: for sizing a deployment.
    Loadtest(crate::loadtest::args::LoadtestArgs),
    /// A fast stand-in for SES v2 and SNS that records load-test markers (AWS_ENDPOINT_URL).
    FakeProvider(crate::loadtest::args::FakeProviderArgs),
    /// Exit 0 when URL answers 2xx (container health checks; the image has no curl).
    Probe(ProbeArgs),
}

impl Command {
    /// Whether this runs as a service (logs are where its failures are read), not a command.
    pub fn is_service(&self) -> bool {
        matches!(self, Command::Migrate(_) | Command::Api(_) | Command::Worker(_) | Command::Dev(_))
    }
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
    pub url: String,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Create the campaign in FILE, or update the draft of the campaign with its name.
    Apply(ApplyArgs),
}

/// Where a client command finds the API.
#[derive(Debug, Args)]
pub struct ApiClientArgs {
    /// The API to talk to.
    #[arg(long, env = "HERALD_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// An API key with the scopes the command needs (`--api-key` or HERALD_API_KEY).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
}

impl ApiClientArgs {
    /// The key, or an error naming both ways to give it (clap's own names only the flag).
    pub fn key(&self) -> anyhow::Result<&str> {
        self.api_key
            .as_ref()
            .map(Secret::expose)
            .filter(|key| !key.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("no API key: pass --api-key KEY or set HERALD_API_KEY"))
    }
}

#[derive(Debug, Subcommand)]
pub enum SuppressionsCommand {
    /// Print the list, one JSON line per address (needs profiles:read).
    List(SuppressionsListArgs),
    /// Suppress an address (needs profiles:write): nothing is sent to it any more.
    Add(SuppressionArgs),
    /// Take an address off the list (needs profiles:write).
    Remove(SuppressionArgs),
}

#[derive(Debug, Subcommand)]
pub enum AudiencesCommand {
    /// Create an audience (needs profiles:write): a filter over stored profiles (computed at
    /// once; its size is printed), or, without --filter, an empty list to upload members to.
    Create(AudienceCreateArgs),
    /// Replace a list audience's members with FILE (NDJSON, or CSV when it ends in .csv).
    Upload(AudienceUploadArgs),
    /// Print the audiences, one JSON line each (needs profiles:read).
    List(WebhookArgs),
}

#[derive(Debug, Args)]
pub struct AudienceCreateArgs {
    /// Unique in the sandbox.
    pub name: String,
    /// The filter, as JSON (see README, "Audiences"), or @FILE to read it from a file.
    #[arg(long)]
    pub filter: Option<String>,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Args)]
pub struct AudienceUploadArgs {
    /// The audience's id or name.
    pub audience: String,
    /// One member a line: NDJSON `{"userId", "namespace", "type"}`, or CSV with a header line.
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// The namespace of members that name none.
    #[arg(long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Send the sandbox's feedback events to URL (needs keys:admin); prints the signing secret
    /// the first time (and with --rotate-secret), once.
    Set(WebhookSetArgs),
    /// Print the webhook (never its secret) and whether it is enabled.
    Show(WebhookArgs),
    /// Stop sending feedback events.
    Remove(WebhookArgs),
}

#[derive(Debug, Args)]
pub struct WebhookSetArgs {
    /// The receiver (http or https, a public address).
    #[arg(long)]
    pub url: String,
    /// Events to send (comma-separated: sent, delivered, bounce, complaint, error, excluded); all by default.
    #[arg(long, value_delimiter = ',')]
    pub events: Vec<String>,
    /// Channels whose events are sent (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Replace the signing secret.
    #[arg(long)]
    pub rotate_secret: bool,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Args)]
pub struct SuppressionsListArgs {
    /// Only this channel (`email` or `sms`).
    #[arg(long)]
    pub channel: Option<String>,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Args)]
pub struct SuppressionArgs {
    /// `email` or `sms`.
    pub channel: String,
    /// The email address or the E.164 phone number.
    pub address: String,
    /// `add`: why (`manual`, `hard-bounce`, `complaint`, `opted-out`).
    #[arg(long, default_value = "manual")]
    pub reason: String,
    /// `add`: a note kept with the entry.
    #[arg(long)]
    pub detail: Option<String>,
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A campaign document (the body of `POST /campaigns`), e.g. examples/otp-sms.json.
    #[arg(short = 'f', long = "file")]
    pub file: std::path::PathBuf,
    /// Activate it after applying (the review runs; problems are printed).
    #[arg(long)]
    pub activate: bool,
    /// Needs campaigns:read and campaigns:write.
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Args)]
pub struct ExecuteArgs {
    /// The campaign's name or id; it must be live.
    pub campaign: String,
    /// The recipient's address: an email address, a phone number (E.164) or a device token.
    #[arg(long)]
    pub to: String,
    /// For a push campaign: the device token's platform (the key of the campaign's
    /// platformApplicationArn, e.g. `fcm`); by default its only platform.
    #[arg(long)]
    pub platform: Option<String>,
    /// A context variable for the content, e.g. `--context otp=123456` (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// The request id (idempotency key); a fresh one by default.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Print the execution id and exit, without following the status.
    #[arg(long)]
    pub no_follow: bool,
    /// How long to follow the status before giving up.
    #[arg(long, default_value_t = 30)]
    pub wait_seconds: u64,
    /// Needs executions:write and executions:read (campaigns:read to find a campaign by name).
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print dead letters as JSON lines, newest first.
    List(DlqListArgs),
    /// Re-inject dead letters for another try (idempotent: a letter is replayed once).
    Replay(DlqReplayArgs),
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Only this sandbox's dead letters.
    #[arg(long)]
    pub sandbox: Option<String>,
    /// Only this campaign's.
    #[arg(long)]
    pub campaign: Option<uuid::Uuid>,
    /// Only this reason (e.g. `max-attempts`, `invalid-message`, `broker-delivery_limit`).
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// Dead letter ids (from `herald dlq list`).
    #[arg(required = true)]
    pub ids: Vec<uuid::Uuid>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it (only the key, on stdout). It cannot be shown again.
    Create(CreateKeyArgs),
    /// Print keys as JSON lines, oldest first: id, sandbox, name, prefix, scopes, last use
    /// (never the secret).
    List(ListKeysArgs),
    /// Revoke keys; every API process refuses them within a second.
    Revoke(RevokeKeysArgs),
    /// Replace a key with a new one (same sandbox, name and scopes) and print only the new key;
    /// the old one stops working at once.
    Rotate(RotateKeyArgs),
}

#[derive(Debug, Args)]
pub struct ListKeysArgs {
    /// Only this sandbox's keys.
    #[arg(long)]
    pub sandbox: Option<String>,
    /// Also list revoked keys.
    #[arg(long)]
    pub include_revoked: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct RevokeKeysArgs {
    /// Key ids (from `herald keys list`).
    #[arg(required = true)]
    pub ids: Vec<uuid::Uuid>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The id of the key to replace (from `herald keys list`).
    pub id: uuid::Uuid,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    /// The sandbox the key belongs to; it sees only that sandbox's campaigns and profiles.
    #[arg(long)]
    pub sandbox: String,
    /// Comma-separated scopes, or `all`: campaigns:read, campaigns:write, profiles:read,
    /// profiles:write, executions:write, executions:read, keys:admin.
    #[arg(long)]
    pub scopes: String,
    /// A label to recognise the key by.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/herald",
        hide_env_values = true
    )]
    pub database_url: Secret,
    /// Largest number of pooled database connections per process.
    #[arg(long, env = "HERALD_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "HERALD_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: Secret,
    /// Prefix of every exchange and queue name (`PREFIX.work`, `PREFIX.email`, ...).
    #[arg(long, env = "HERALD_AMQP_PREFIX", default_value = "herald")]
    pub amqp_prefix: String,
    /// Delays of the retry queues in seconds, shortest first.
    #[arg(long, env = "HERALD_RETRY_TIERS_SECONDS", default_value = "5,30,300", value_delimiter = ',')]
    pub retry_tiers_seconds: Vec<u64>,
    /// Deliveries of one message before the broker dead-letters it.
    #[arg(long, env = "HERALD_DELIVERY_LIMIT", default_value_t = 10)]
    pub delivery_limit: u32,
    /// Bound on each channel queue; publishes beyond it are refused and answered 503.
    #[arg(long, env = "HERALD_QUEUE_MAX_LENGTH")]
    pub queue_max_length: Option<u32>,
    /// Queues per channel; each sandbox's messages go to one (by a hash of its name) and workers
    /// serve them in turn. Raise freely; to lower it, keep workers on the old value until the
    /// extra queues are empty.
    #[arg(long, env = "HERALD_AMQP_SHARDS", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub amqp_shards: u16,
}

impl ApiArgs {
    pub fn limits(&self) -> herald_ingest::ratelimit::Limits {
        herald_ingest::ratelimit::Limits {
            sandbox_per_sec: self.rate_limit_per_sec,
            key_per_sec: self.key_rate_limit_per_sec,
            daily_email: self.email_daily_quota,
            daily_sms: self.sms_daily_quota,
            daily_push: self.push_daily_quota,
        }
    }
}

impl BrokerArgs {
    pub fn topology(&self) -> herald_broker::Topology {
        herald_broker::Topology {
            prefix: self.amqp_prefix.clone(),
            retry_tiers: self.retry_tiers_seconds.iter().map(|s| std::time::Duration::from_secs(*s)).collect(),
            delivery_limit: self.delivery_limit,
            max_queue_length: self.queue_max_length,
            shards: self.amqp_shards,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HERALD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Base URL clients reach the API at, used in generated cURL samples (default: from the listen address).
    #[arg(long, env = "HERALD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, env = "HERALD_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// An all-scopes API key registered at start-up if absent; registering it revokes any other
    /// bootstrap key. At least 12 characters; stored as Argon2id (for local stacks only).
    #[arg(long, env = "HERALD_BOOTSTRAP_API_KEY", hide_env_values = true)]
    pub bootstrap_api_key: Option<Secret>,
    /// The sandbox of the bootstrap key.
    #[arg(long, env = "HERALD_BOOTSTRAP_SANDBOX", default_value = "default")]
    pub bootstrap_sandbox: String,
    /// Recipients per second per sandbox, all API processes together (bursts of a second's
    /// worth); beyond, 429. 0: no limit.
    #[arg(long, env = "HERALD_RATE_LIMIT_PER_SEC", default_value_t = 1_000)]
    pub rate_limit_per_sec: u32,
    /// Recipients per second per API key, all API processes together; beyond, 429. Below the
    /// sandbox's rate, so that one client cannot starve the sandbox's other keys. 0: no limit.
    #[arg(long, env = "HERALD_KEY_RATE_LIMIT_PER_SEC", default_value_t = 500)]
    pub key_rate_limit_per_sec: u32,
    /// SMS recipients per sandbox per UTC day (the SMS budget); beyond, 429. 0: no quota.
    #[arg(long, env = "HERALD_SMS_DAILY_QUOTA", default_value_t = 10_000)]
    pub sms_daily_quota: u64,
    /// Email recipients per sandbox per UTC day; beyond, 429. 0: no quota.
    #[arg(long, env = "HERALD_EMAIL_DAILY_QUOTA", default_value_t = 200_000)]
    pub email_daily_quota: u64,
    /// Push recipients per sandbox per UTC day; beyond, 429. 0: no quota.
    #[arg(long, env = "HERALD_PUSH_DAILY_QUOTA", default_value_t = 0)]
    pub push_daily_quota: u64,
    /// Confirm-mode channels executions are published on.
    #[arg(long, env = "HERALD_PUBLISH_CHANNELS", default_value_t = 4)]
    pub publish_channels: usize,
    /// How long a request being accepted holds its requestId; a retry meanwhile gets 409 with
    /// Retry-After, and takes over after it (when the first attempt died mid-accept).
    #[arg(long, env = "HERALD_INGEST_LEASE_SECONDS", default_value_t = 5)]
    pub ingest_lease_seconds: u64,
    /// A publish not confirmed by the broker within this many milliseconds fails (503).
    #[arg(long, env = "HERALD_CONFIRM_TIMEOUT_MS", default_value_t = 10_000)]
    pub confirm_timeout_ms: u64,
    /// Audience members one fan-out step reads, publishes (confirmed) and checkpoints.
    #[arg(long, env = "HERALD_FANOUT_PAGE_SIZE", default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub fanout_page_size: i64,
    /// A fan-out waits while its shard queue holds this many ready messages (workers are behind).
    #[arg(long, env = "HERALD_FANOUT_QUEUE_LIMIT", default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub fanout_queue_limit: u32,
    /// How long a fan-out's lease lasts without a checkpoint: after a crash, another instance
    /// resumes it this long after its last page.
    #[arg(long, env = "HERALD_FANOUT_LEASE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub fanout_lease_seconds: u64,
    /// How long after it fires an audience execution may publish; recipients not reached by then
    /// are excluded (AJO: 12 hours).
    #[arg(long, env = "HERALD_FANOUT_WINDOW_SECONDS", default_value_t = 43_200, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub fanout_window_seconds: u64,
    /// How often each API process looks for due schedules and for fan-outs nobody publishes.
    #[arg(long, env = "HERALD_FANOUT_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub fanout_poll_ms: u64,
    /// Audience executions one API process publishes at once.
    #[arg(long, env = "HERALD_FANOUT_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub fanout_concurrency: u64,
    /// How long an accepted requestId is remembered (a retry within it gets the same execution);
    /// at least the 24 h Herald promises, at most ten years.
    #[arg(long, env = "HERALD_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 48, value_parser = clap::value_parser!(u64).range(24..=87_600))]
    pub idempotency_retention_hours: u64,
    /// Rows per batched idempotency write (claims and completions of executions).
    #[arg(long, env = "HERALD_INGEST_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub ingest_batch_size: u64,
    /// Concurrent writers of each kind of batched idempotency write. One writer makes the
    /// biggest batches (what queues while a statement runs goes into the next): in the e2e
    /// benchmark it cut the database's CPU per message by 16–29% against two.
    #[arg(long, env = "HERALD_INGEST_BATCH_WRITERS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub ingest_batch_writers: u64,
    /// SNS topics (comma-separated ARNs) whose notifications `POST /feedback/sns` takes in, once
    /// their signature verifies; unset: the endpoint answers 404. (Anyone can create a topic.)
    #[arg(long, env = "HERALD_FEEDBACK_SNS_TOPIC_ARNS", value_delimiter = ',')]
    pub feedback_sns_topic_arns: Vec<String>,
    /// The `scheme://host[:port]` a signing certificate or subscribe URL must have (a regex).
    #[arg(
        long,
        env = "HERALD_SNS_ORIGIN_PATTERN",
        default_value = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
    )]
    pub sns_origin_pattern: String,
    #[command(flatten)]
    pub startup: StartupArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub tuning: WorkerTuning,
    /// Where the worker serves Prometheus `/metrics` (`herald dev` serves them on the API port).
    #[arg(long, env = "HERALD_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub startup: StartupArgs,
}

/// Settings of the worker role (`herald worker`, and the worker inside `herald dev`).
#[derive(Debug, Clone, Args)]
pub struct WorkerTuning {
    /// Channels this worker consumes (comma-separated).
    #[arg(long, env = "HERALD_WORKER_CHANNELS", default_value = "email,sms,push", value_delimiter = ',', value_parser = channel)]
    pub worker_channels: Vec<herald_core::Channel>,
    /// Unacknowledged messages the broker may push to each consumer (one per shard queue).
    #[arg(long, env = "HERALD_WORKER_PREFETCH", default_value_t = 200)]
    pub worker_prefetch: u16,
    /// Messages of one channel processed at once.
    #[arg(long, env = "HERALD_WORKER_CONCURRENCY", default_value_t = 64)]
    pub worker_concurrency: usize,
    /// On SIGTERM, how long in-flight sends may take to finish before the worker exits.
    #[arg(long, env = "HERALD_WORKER_GRACE_SECONDS", default_value_t = 25)]
    pub worker_grace_seconds: u64,
    /// Provider calls in all (across retry tiers) before a message is dead-lettered.
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 12)]
    pub max_attempts: u32,
    /// A delivery whose worker started a provider call longer ago than this and never finished is
    /// recorded `unknown` (maybe sent) instead of being sent again. (A claim whose call never
    /// started is taken over after 5 s and sent.)
    #[arg(long, env = "HERALD_STALE_CLAIM_SECONDS", default_value_t = 120)]
    pub stale_claim_seconds: u64,
    /// How long a provider call may take before it counts as maybe delivered (recorded `unknown`,
    /// not resent unless the campaign sets resendMaybeSent).
    #[arg(long, env = "HERALD_PROVIDER_TIMEOUT_MS", default_value_t = 10_000)]
    pub provider_timeout_ms: u64,
    /// How long connecting to the provider may take; a connection that fails sent nothing, so
    /// the send is retried.
    #[arg(long, env = "HERALD_PROVIDER_CONNECT_TIMEOUT_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub provider_connect_timeout_ms: u64,
    /// How long a channel pauses after the database failed during a delivery (the message goes
    /// back to a retry tier without using an attempt).
    #[arg(long, env = "HERALD_DATABASE_PAUSE_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub database_pause_ms: u64,
    /// Rows per batched delivery write (claims, call marks, outcomes).
    #[arg(long, env = "HERALD_WORKER_BATCH_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub worker_batch_size: u64,
    /// Concurrent writers of each kind of batched delivery write (one: see the ingest's).
    #[arg(long, env = "HERALD_WORKER_BATCH_WRITERS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub worker_batch_writers: u64,
    /// Email sends per second across all workers (the SES account's maximum send rate); 0: no limit.
    #[arg(long, env = "HERALD_EMAIL_RATE_PER_SEC", default_value_t = 0.0)]
    pub email_rate_per_sec: f64,
    /// SMS sends per second across all workers; 0: no limit.
    #[arg(long, env = "HERALD_SMS_RATE_PER_SEC", default_value_t = 0.0)]
    pub sms_rate_per_sec: f64,
    /// Push sends per second across all workers; 0: no limit.
    #[arg(long, env = "HERALD_PUSH_RATE_PER_SEC", default_value_t = 0.0)]
    pub push_rate_per_sec: f64,
    /// Where messages go: `aws` (SES v2 and SNS, configured by the standard AWS_* variables) or
    /// `outbox` (append each rendered message to HERALD_OUTBOX_PATH; delivers nothing).
    #[arg(long, env = "HERALD_PROVIDER", value_enum, default_value_t = ProviderKind::Aws)]
    pub provider: ProviderKind,
    /// The file the `outbox` provider appends JSON lines to.
    #[arg(long, env = "HERALD_OUTBOX_PATH", default_value = "herald-outbox.jsonl")]
    pub outbox_path: std::path::PathBuf,
    /// The SES configuration set named by emails whose campaign names none: its event
    /// destination (an SNS topic) is where SES publishes deliveries, bounces and complaints.
    #[arg(long, env = "HERALD_SES_CONFIGURATION_SET")]
    pub ses_configuration_set: Option<String>,
    /// The SQS queue (subscribed to that SNS topic) this worker long-polls for SES events; unset:
    /// no feedback is pulled by this worker.
    #[arg(long, env = "HERALD_FEEDBACK_SQS_QUEUE_URL")]
    pub feedback_sqs_queue_url: Option<String>,
    /// Receive loops this worker runs on the feedback queue at once.
    #[arg(long, env = "HERALD_FEEDBACK_SQS_POLLERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub feedback_sqs_pollers: u16,
    /// How long a feedback event's identity is kept to recognise a second copy of it, in days.
    #[arg(long, env = "HERALD_FEEDBACK_RETENTION_DAYS", default_value_t = 14, value_parser = clap::value_parser!(u64).range(1..=365))]
    pub feedback_retention_days: u64,
    /// Deliveries of one webhook event (each after a retry tier) before it is dead-lettered.
    #[arg(long, env = "HERALD_WEBHOOK_MAX_ATTEMPTS", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub webhook_max_attempts: u32,
    /// How long a webhook receiver may take to answer, in milliseconds.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub webhook_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    Aws,
    Outbox,
}

/// `herald dev`: the API and a worker in one process, for a machine with PostgreSQL and
/// RabbitMQ but no AWS account (use `HERALD_PROVIDER=outbox`).
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub worker: WorkerTuning,
}

/// What every long-running process needs at start-up.
#[derive(Debug, Clone, Args)]
pub struct StartupArgs {
    /// Apply pending migrations at start-up (safe with several processes starting at once).
    #[arg(long, env = "HERALD_MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
    /// How long to wait for the database at start-up before giving up, in seconds.
    #[arg(long, env = "HERALD_DATABASE_WAIT_SECONDS", default_value_t = 60)]
    pub database_wait_seconds: u64,
    /// How often this process folds pending report rows into the rollups (every process does;
    /// they share the work). Reports read pending rows too, so this bounds work, not freshness.
    #[arg(long, env = "HERALD_REPORT_ROLLUP_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub report_rollup_interval_ms: u64,
    /// Networks (comma-separated CIDRs) a customer webhook may point into although they are not
    /// public (loopback, private, link-local); by default none: such URLs are refused.
    #[arg(long, env = "HERALD_WEBHOOK_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub webhook_allowed_networks: Vec<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

impl StartupArgs {
    /// `HERALD_WEBHOOK_ALLOWED_NETWORKS`, parsed.
    pub fn webhook_networks(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        herald_core::feedback::ssrf::parse_networks(&self.webhook_allowed_networks)
            .map_err(|why| anyhow::anyhow!("HERALD_WEBHOOK_ALLOWED_NETWORKS: {why}"))
    }
}

#[derive(Debug, Clone, Args)]
pub struct LoggingArgs {
    /// Log filter in `tracing` syntax, e.g. `info` or `herald_api=debug,info`.
    #[arg(long, env = "HERALD_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// OpenTelemetry OTLP/HTTP endpoint for traces, e.g. `http://otel-collector:4318`; empty or
    /// unset exports no traces.
    #[arg(long, env = "HERALD_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// OTLP/HTTP encoding.
    #[arg(long, env = "HERALD_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf, global = true)]
    pub otlp_protocol: OtlpProtocol,
    /// Share of new traces recorded (0 to 1); a caller's sampled `traceparent` is always followed.
    #[arg(long, env = "HERALD_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = ratio, global = true)]
    pub otlp_sample_ratio: f64,
}

fn channel(text: &str) -> Result<herald_core::Channel, String> {
    text.trim().parse()
}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("`{text}` is not a ratio between 0 and 1")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    #[value(name = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A setting that must not appear in logs or `Debug` output (URLs with passwords, API keys).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Every `HERALD_*` variable the binary reads, with its default (for docs and drift checks).
pub fn environment_variables() -> Vec<(String, Option<String>)> {
    fn walk(command: &clap::Command, out: &mut Vec<(String, Option<String>)>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                let name = env.to_string_lossy().to_string();
                let default = arg.get_default_values().first().map(|value| value.to_string_lossy().to_string());
                if !out.iter().any(|(known, _)| *known == name) {
                    out.push((name, default));
                }
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&<Cli as clap::CommandFactory>::command(), &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tunables_out_of_their_range_are_refused() {
        for (flag, value) in [
            ("--idempotency-retention-hours", "23"),
            ("--idempotency-retention-hours", "4294967296"),
            ("--ingest-batch-size", "0"),
            ("--ingest-batch-writers", "65"),
            ("--database-pause-ms", "18446744073709551615"),
            ("--provider-connect-timeout-ms", "0"),
            ("--report-rollup-interval-ms", "9"),
        ] {
            assert!(Cli::try_parse_from(["herald", "dev", flag, value]).is_err(), "{flag} {value}");
        }
        assert!(Cli::try_parse_from(["herald", "dev", "--idempotency-retention-hours", "87600"]).is_ok());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret: Secret = "postgres://user:hunter2@db/herald".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn the_documented_variables_are_all_read() {
        let names: Vec<String> = environment_variables().into_iter().map(|(name, _)| name).collect();
        for expected in [
            "HERALD_DATABASE_URL",
            "HERALD_AMQP_URL",
            "HERALD_HTTP_ADDR",
            "HERALD_BOOTSTRAP_API_KEY",
            "HERALD_BOOTSTRAP_SANDBOX",
        ] {
            assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
        }
    }
}
