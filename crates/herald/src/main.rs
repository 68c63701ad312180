use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = herald::cli::Cli::parse();
    let _telemetry = herald::telemetry::init(&cli);
    // A service's failure goes to its log as well (where its operators look); a command a person
    // typed says it once, on stderr.
    let service = cli.command.is_service();
    match herald::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            if service {
                tracing::error!(error = format!("{error:#}"), "herald failed");
            }
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
