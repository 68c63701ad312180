//! The `herald` binary's wiring: command line, logging, and the subcommands. Logic lives in the
//! library crates; this crate only builds them from configuration and runs them.

mod api_client;
mod apply;
mod audiences;
pub mod cli;
mod execute;
mod feedback;
mod jobs;
mod keys;
pub mod loadtest;
mod run;
pub mod telemetry;

pub use run::run;
