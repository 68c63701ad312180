//! The fault suite: real `herald api` and `herald worker` processes, a private RabbitMQ node, a
//! private PostgreSQL cluster and a scriptable fake SES, pushed through crashes, restarts and
//! provider failures while a retrying client sends. Each scenario accounts for every accepted
//! message — sent, failed or dead-lettered as expected, or `unknown` only after a provider call —
//! and prints one `FAULTS` summary line with its counts.
//!
//! It never touches the machine's shared PostgreSQL (5432) or RabbitMQ (5672): the broker and
//! database it restarts are its own, started once per run on spare ports and stopped at the end
//! (also on panic). The herald binary is `target/debug/herald` (`cargo build -p herald`) or
//! `HERALD_BIN`.
//!
//! Environment: `HERALD_FAULTS_LONG=1` sends five times as many messages per scenario;
//! `HERALD_FAULTS_ONLY=worker-kill,api-kill` runs only the named scenarios.

mod accounting;
mod client;
mod fake_ses;
mod herald;
mod hostile_templates;
mod infra_faults;
mod process_faults;
mod provider_faults;
mod run;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accounting::Report;
use herald_tests::{postgres, rabbit};
use run::{Env, Run};

/// Every scenario, in the order they run (they take turns: a broker or database restart must
/// not land in another scenario's accounting).
const SCENARIOS: [&str; 10] = [
    "worker-kill",
    "api-kill",
    "broker-restart",
    "postgres-restart",
    "transient-errors",
    "provider-hang",
    "permanent-rejections",
    "sigterm-drain",
    "dead-letter-replay",
    "hostile-templates",
];

async fn run_scenario(name: &str, env: &Env) -> Report {
    match name {
        "worker-kill" => process_faults::worker_kill(env).await,
        "api-kill" => process_faults::api_kill(env).await,
        "broker-restart" => infra_faults::broker_restart(env).await,
        "postgres-restart" => infra_faults::postgres_restart(env).await,
        "transient-errors" => provider_faults::transient_errors(env).await,
        "provider-hang" => provider_faults::provider_hang(env).await,
        "permanent-rejections" => provider_faults::permanent_rejections(env).await,
        "sigterm-drain" => process_faults::sigterm_drain(env).await,
        "dead-letter-replay" => provider_faults::dead_letter_replay(env).await,
        "hostile-templates" => hostile_templates::hostile_templates(env).await,
        other => unreachable!("unknown scenario {other}"),
    }
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    herald_tests::free_port()
}

const RUN_DIR_PREFIX: &str = "herald-faults-";

/// Stops the broker and database of earlier runs that were killed before their guards ran
/// (their directory is named after their pid, which no longer exists), and deletes their data;
/// their logs stay.
fn reap_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(RUN_DIR_PREFIX).and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        if dir.join("rabbit/rabbit.pid").exists() || dir.join("pg/data/postmaster.pid").exists() {
            eprintln!("faults: stopping what a killed run left in {}", dir.display());
            rabbit::stop_leftover(&dir.join("rabbit"), pid);
            postgres::stop_leftover(&dir.join("pg"));
        }
        remove_data(&dir);
    }
}

/// Deletes the broker's and the database's data of a run directory, keeping its logs.
fn remove_data(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir.join("rabbit/mnesia"));
    let _ = std::fs::remove_file(dir.join("rabbit/rabbit.pid"));
    let _ = std::fs::remove_dir_all(dir.join("pg/data"));
}

/// A directory of ours under /tmp that the `postgres` user can traverse.
fn run_directory() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("{RUN_DIR_PREFIX}{}", std::process::id()));
    for sub in ["logs", "rabbit", "pg"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create the run directory");
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("open the run directory");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_message_is_sent_once_or_accounted_for_under_faults() {
    let started = Instant::now();
    let long = std::env::var("HERALD_FAULTS_LONG").is_ok_and(|v| v == "1");
    let only: Option<Vec<String>> =
        std::env::var("HERALD_FAULTS_ONLY").ok().map(|names| names.split(',').map(|n| n.trim().to_string()).collect());
    if let Some(only) = &only {
        for name in only {
            assert!(SCENARIOS.contains(&name.as_str()), "HERALD_FAULTS_ONLY: no scenario {name}; known: {SCENARIOS:?}");
        }
    }
    let binary = herald::binary();
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok().map(chrono::DateTime::<chrono::Utc>::from);
    println!("faults: herald binary {} (built {built:?}){}", binary.display(), if long { ", long run" } else { "" });

    reap_leftovers();
    let dir = run_directory();
    let (node_dir, pg_dir) = (dir.join("rabbit"), dir.join("pg"));
    let node = tokio::task::spawn_blocking(move || rabbit::RabbitNode::start(&node_dir));
    let pg = tokio::task::spawn_blocking(move || postgres::PgCluster::start(&pg_dir));
    let (node, pg) =
        (node.await.expect("start the private RabbitMQ node"), pg.await.expect("start the private PostgreSQL"));
    println!(
        "faults: private RabbitMQ {} on 127.0.0.1:{}, PostgreSQL on 127.0.0.1:{}, files in {} ({:.1}s)",
        node.name,
        node.port,
        pg.port,
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    let env = Arc::new(Env {
        node: Arc::new(Mutex::new(node)),
        pg: Arc::new(Mutex::new(pg)),
        fake: fake_ses::FakeSes::start().await,
        logs: dir.join("logs"),
        long,
    });

    let mut reports = Vec::new();
    for name in SCENARIOS.iter().filter(|name| only.as_ref().is_none_or(|only| only.iter().any(|o| o == *name))) {
        let scenario_started = Instant::now();
        // Its own task, so that a scenario that panics (a process that never starts) is reported
        // and the others still run; its processes die with it (their guards kill them).
        let task = {
            let env = Arc::clone(&env);
            let name = name.to_string();
            tokio::spawn(async move { run_scenario(&name, &env).await })
        };
        let report = match task.await {
            Ok(report) => report,
            Err(error) => {
                let report = Run::aborted(name, format!("{error}"));
                println!("{}", report.summary());
                report
            }
        };
        println!("faults: {name} took {:.1}s", scenario_started.elapsed().as_secs_f64());
        reports.push(report);
    }

    // The guards stop the node and the cluster.
    drop(env);
    remove_data(&dir);
    println!("\nfaults: {} scenario(s) in {:.0}s", reports.len(), started.elapsed().as_secs_f64());
    for report in &reports {
        println!("{}", report.summary());
    }
    let failed: Vec<&Report> = reports.iter().filter(|r| r.violation_count() > 0).collect();
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let details: String = failed.iter().map(|r| r.details()).collect();
    panic!(
        "{} scenario(s) broke Herald's promise (logs kept in {}):\n{details}",
        failed.len(),
        dir.join("logs").display()
    );
}
