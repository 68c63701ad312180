//! Logging and tracing set-up shared by every subcommand: text for people, JSON for log
//! pipelines, always on stderr (stdout stays clean for command output such as `herald keys
//! create`), redacted; traces over OTLP when an endpoint is configured.

use herald_telemetry::trace::{TelemetryGuard, TelemetrySettings};

use crate::cli::{Cli, Command, LogFormat, OtlpProtocol};

/// Installs logging and tracing for `cli`'s subcommand; keep the guard until exit.
pub fn init(cli: &Cli) -> TelemetryGuard {
    let service = match cli.command {
        Command::Api(_) => "herald-api",
        Command::Worker(_) => "herald-worker",
        Command::Dev(_) => "herald-dev",
        _ => "herald",
    };
    let settings = TelemetrySettings {
        log: cli.logging.log.clone(),
        json_logs: cli.logging.log_format == LogFormat::Json,
        otlp_endpoint: cli.logging.otlp_endpoint.clone(),
        otlp_json: cli.logging.otlp_protocol == OtlpProtocol::HttpJson,
        sample_ratio: cli.logging.otlp_sample_ratio,
        service_name: service.to_string(),
    };
    let (guard, warnings) = herald_telemetry::trace::init(&settings);
    for warning in warnings {
        tracing::warn!(%warning, "telemetry set-up");
    }
    guard
}
