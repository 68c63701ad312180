//! The settings of `herald loadtest` and `herald fake-provider` (declared here rather than in
//! `cli.rs`: they are tools for sizing a deployment, not settings of a service).

use std::path::PathBuf;

use clap::Args;

use crate::cli::ApiClientArgs;

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// The campaign's name or id; it must be live, and its content must render
    /// `{{ context.marker }}` for `--provider` to count its messages.
    pub campaign: String,
    /// The recipient of each call (an external recipient); `{seq}` is replaced by the call's
    /// number.
    #[arg(long, default_value = "loadtest+{seq}@example.com")]
    pub to: String,
    /// The execution endpoint called: `unitary`, or `highthroughput` (for a campaign marked
    /// `highThroughput`).
    #[arg(long, value_enum, default_value_t = Endpoint::Unitary)]
    pub endpoint: Endpoint,
    /// For a push campaign: the device token's platform.
    #[arg(long)]
    pub platform: Option<String>,
    /// Calls per second, started on schedule whatever the answers (open loop); 0 runs a closed
    /// loop of `--connections` clients instead, as fast as they are answered (saturation).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rate: u32,
    /// Clients of the closed loop (`--rate 0`).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// Calls outstanding at most in the open loop; a call over that waits, and the wait counts
    /// in its latency.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight: u32,
    /// How long calls are started for (at most a day).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_seconds: u64,
    /// A call not answered within this counts as an error.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub timeout_seconds: u64,
    /// A context variable for the content, e.g. `--context otp=123456` (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// The `herald fake-provider` the workers send to: read back what it received (sent, lost,
    /// duplicated, latency to the provider).
    #[arg(long, value_name = "URL")]
    pub provider: Option<String>,
    /// Once the calls are done, how long the provider may receive nothing new before the
    /// messages still missing count as lost.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub drain_seconds: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Needs executions:write (campaigns:read to find a campaign by name).
    #[command(flatten)]
    pub api: ApiClientArgs,
}

#[derive(Debug, Args)]
pub struct FakeProviderArgs {
    /// Where to listen; point workers at it with AWS_ENDPOINT_URL=http://ADDR.
    #[arg(long, default_value = "127.0.0.1:4566")]
    pub addr: String,
    /// Answer every Nth call with success but record nothing (a provider that loses messages;
    /// for testing the load test's counters).
    #[arg(long, default_value_t = 0)]
    pub drop_every: u64,
    /// Record every Nth call twice (a provider that delivers twice; for testing the counters).
    #[arg(long, default_value_t = 0)]
    pub repeat_every: u64,
}

/// Which execution endpoint a load test calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    Unitary,
    #[value(name = "highthroughput")]
    HighThroughput,
}

impl Endpoint {
    /// The last segment of its path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Unitary => "unitary",
            Endpoint::HighThroughput => "highthroughput",
        }
    }
}
