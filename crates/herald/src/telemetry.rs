//! Logging set-up shared by every subcommand: text for people, JSON for log pipelines, always on
//! stderr so that stdout stays clean for command output such as `herald keys create`.

use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, LoggingArgs};

pub fn init(args: &LoggingArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
