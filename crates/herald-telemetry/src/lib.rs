//! Herald's telemetry, shared by every process: Prometheus metrics ([`metrics`]), OpenTelemetry
//! traces that follow a message across the broker ([`trace`]), and logs and spans that never
//! carry an address, a phone number or a context value ([`redact`]).

pub mod metrics;
pub mod redact;
pub mod trace;

pub use metrics::Metrics;
