//! The end-to-end benchmark: real `herald api` and `herald worker` processes (release build),
//! a private PostgreSQL cluster (durable defaults) and RabbitMQ node, `herald fake-provider`
//! standing in for SES v2, and `herald loadtest` as the open-loop load generator, all on this
//! machine's cores. For each phase it prints and records accepted/s and sent/s, lost and
//! duplicated (per marker), latency from each call's due time to the provider, and CPU-seconds
//! per process and per message, read from /proc.
//!
//! `cargo bench -p herald-tests --bench e2e`. Settings: `HERALD_E2E_PHASES` (default
//! `idle,500,2000,max`: `idle` measures what the stack spends with no load, a number is a rate
//! per second, `max` is 64 connections in a closed loop),
//! `HERALD_E2E_SECONDS` (15 per phase), `HERALD_E2E_OUT` (default `target/e2e/results.json`),
//! `HERALD_BIN` (a herald binary to measure; by default the bench builds
//! `cargo build --release -p herald` and measures that), `HERALD_E2E_PG_SETTINGS` (lines added
//! to postgresql.conf, `;`-separated, e.g. `synchronous_commit = off`, to measure a setting),
//! `HERALD_E2E_HERALD_ENV` (`NAME=VALUE;…` added to the herald processes' environment),
//! `HERALD_E2E_ENDPOINT` (`unitary`, the default, or `highthroughput`: the execution endpoint the
//! load calls; the campaign is marked `highThroughput`, so either takes it).

mod procfs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_tests::postgres::PgCluster;
use herald_tests::rabbit::RabbitNode;
use serde_json::{Value, json};

const API_KEY: &str = "hk_e2e_bench_only";

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(run());
}

/// A herald process of the stack, killed when dropped.
struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `HERALD_BIN`, else a release build of the workspace's herald (built now if out of date).
fn herald_binary() -> PathBuf {
    if let Ok(path) = std::env::var("HERALD_BIN") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("e2e: cargo build --release -p herald --locked");
    let built = Command::new(cargo)
        .args(["build", "--release", "-p", "herald", "--locked"])
        .current_dir(&workspace)
        .status()
        .expect("run cargo build");
    assert!(built.success(), "cargo build --release -p herald failed");
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| workspace.join("target"), PathBuf::from);
    target.join("release/herald")
}

/// The environment every herald process of the bench gets: nothing inherited but PATH.
fn environment(database_url: &str, amqp_url: &str, provider_url: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HERALD_DATABASE_URL", database_url.into()),
        ("HERALD_AMQP_URL", amqp_url.into()),
        ("HERALD_BOOTSTRAP_API_KEY", API_KEY.into()),
        ("HERALD_LOG", "warn".into()),
        // An operator sizing a deployment lifts the per-sandbox limits; the limiter's leases
        // still run (one block per tenth of a second of the rate).
        ("HERALD_RATE_LIMIT_PER_SEC", "1000000".into()),
        ("HERALD_KEY_RATE_LIMIT_PER_SEC", "1000000".into()),
        ("HERALD_EMAIL_DAILY_QUOTA", "0".into()),
        ("AWS_ENDPOINT_URL", provider_url.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "e2e-bench".into()),
        ("AWS_SECRET_ACCESS_KEY", "e2e-bench".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
    .into_iter()
    .map(|(name, value): (&str, String)| (name.to_string(), value))
    .collect();
    // Settings under measurement, e.g. HERALD_E2E_HERALD_ENV="HERALD_WORKER_BATCH_WRITERS=1".
    let extra = std::env::var("HERALD_E2E_HERALD_ENV").unwrap_or_default();
    for pair in extra.split(';').filter(|pair| !pair.trim().is_empty()) {
        let (name, value) = pair.split_once('=').expect("HERALD_E2E_HERALD_ENV: NAME=VALUE;…");
        env.push((name.trim().to_string(), value.trim().to_string()));
    }
    env
}

fn spawn(name: &'static str, binary: &Path, args: &[&str], env: &[(String, String)], logs: &Path) -> Process {
    let log = std::fs::File::create(logs.join(format!("{name}.log"))).expect("create a log file");
    let child = Command::new(binary)
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name.as_str(), value.as_str())))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("could not start herald {name}: {error}"));
    Process { name, child }
}

async fn wait_ready(url: &str, process: &mut Process) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if http.get(url).send().await.is_ok_and(|answer| answer.status().is_success()) {
            return;
        }
        assert!(process.child.try_wait().ok().flatten().is_none(), "herald {} exited at start-up", process.name);
        assert!(started.elapsed() < Duration::from_secs(60), "herald {} not ready at {url}", process.name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the measured parts of the stack have spent so far, in CPU-seconds.
struct Cpu {
    parts: Vec<(&'static str, f64)>,
}

fn cpu(pids: &[(&'static str, u32)], ticks: f64) -> Cpu {
    Cpu { parts: pids.iter().map(|(name, pid)| (*name, procfs::tree_cpu_seconds(*pid, ticks))).collect() }
}

async fn run() {
    let seconds: u64 = std::env::var("HERALD_E2E_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let phases = std::env::var("HERALD_E2E_PHASES").unwrap_or_else(|_| "idle,500,2000,max".into());
    let pg_settings = std::env::var("HERALD_E2E_PG_SETTINGS").unwrap_or_default().replace(';', "\n");
    let binary = herald_binary();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf();
    let out = std::env::var("HERALD_E2E_OUT").map_or_else(|_| workspace.join("target/e2e/results.json"), PathBuf::from);
    let dir = std::env::temp_dir().join(format!("herald-e2e-{}", std::process::id()));
    let logs = dir.join("logs");
    for sub in [&logs, &dir.join("rabbit"), &dir.join("pg")] {
        std::fs::create_dir_all(sub).expect("create the bench's directories");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("open the run directory");
    }
    let (node_dir, pg_dir) = (dir.join("rabbit"), dir.join("pg"));
    let settings = format!("{pg_settings}\n");
    let node = tokio::task::spawn_blocking(move || RabbitNode::start(&node_dir));
    let pg = tokio::task::spawn_blocking(move || PgCluster::start_durable(&pg_dir, &settings));
    let (node, pg) = (node.await.expect("a RabbitMQ node"), pg.await.expect("a PostgreSQL cluster"));
    herald_tests::postgres::create_database(&pg.url("postgres"), "herald").await;
    println!(
        "e2e: {} ; PostgreSQL 127.0.0.1:{} (durable defaults{})",
        binary.display(),
        pg.port,
        if pg_settings.trim().is_empty() { String::new() } else { format!(", plus {pg_settings:?}") }
    );

    let provider_addr = format!("127.0.0.1:{}", herald_tests::free_port());
    let provider_url = format!("http://{provider_addr}");
    let env = environment(&pg.url("herald"), &node.amqp_url(), &provider_url);
    let provider = spawn("fake-provider", &binary, &["fake-provider", "--addr", &provider_addr], &env, &logs);
    let api_addr = format!("127.0.0.1:{}", herald_tests::free_port());
    let api_url = format!("http://{api_addr}");
    let mut api_env = env.clone();
    api_env.push(("HERALD_HTTP_ADDR".into(), api_addr));
    let mut api = spawn("api", &binary, &["api"], &api_env, &logs);
    wait_ready(&format!("{api_url}/readyz"), &mut api).await;
    let metrics_addr = format!("127.0.0.1:{}", herald_tests::free_port());
    let mut worker_env = env.clone();
    worker_env.push(("HERALD_METRICS_ADDR".into(), metrics_addr.clone()));
    let mut worker = spawn("worker", &binary, &["worker"], &worker_env, &logs);
    wait_ready(&format!("http://{metrics_addr}/metrics"), &mut worker).await;

    let mut client_env = env.clone();
    client_env.push(("HERALD_API_URL".into(), api_url.clone()));
    client_env.push(("HERALD_API_KEY".into(), API_KEY.into()));
    let example = workspace.join("examples/loadtest-email.json");
    let applied = Command::new(&binary)
        .env_clear()
        .envs(client_env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .args(["campaign", "apply", "--activate", "-f"])
        .arg(&example)
        .output()
        .expect("run herald campaign apply");
    assert!(applied.status.success(), "campaign apply: {}", String::from_utf8_lossy(&applied.stderr));

    let ticks = procfs::ticks_per_second();
    let pids = [
        ("api", api.pid()),
        ("worker", worker.pid()),
        ("postgres", pg.postmaster_pid().expect("the postmaster's pid")),
        ("rabbitmq", node.server_pid().expect("the RabbitMQ server's pid")),
        ("fake-provider", provider.pid()),
    ];
    // A short warm-up: connections opened, statements prepared, caches filled.
    loadtest(&binary, &client_env, &provider_url, "500", 3, &dir.join("warm-up.json"), ticks).await;

    let mut results = Vec::new();
    for phase in phases.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if phase == "idle" {
            results.push(idle(&pids, ticks, seconds).await);
            continue;
        }
        let rate = if phase == "max" { "0" } else { phase };
        let before = cpu(&pids, ticks);
        let (mut summary, loadgen_cpu) = loadtest(
            &binary,
            &client_env,
            &provider_url,
            rate,
            seconds,
            &dir.join(format!("phase-{phase}.json")),
            ticks,
        )
        .await;
        let after = cpu(&pids, ticks);
        let sent = summary["sent"].as_f64().unwrap_or(0.0).max(1.0);
        let mut processes = serde_json::Map::new();
        for ((name, start), (_, end)) in before.parts.iter().zip(&after.parts) {
            let spent = end - start;
            processes.insert(
                name.to_string(),
                json!({ "cpuSeconds": round(spent, 2), "cpuMsPerMessage": round(spent * 1000.0 / sent, 3) }),
            );
        }
        processes.insert(
            "loadtest".into(),
            json!({ "cpuSeconds": round(loadgen_cpu, 2), "cpuMsPerMessage": round(loadgen_cpu * 1000.0 / sent, 3) }),
        );
        let herald_ms: f64 =
            ["api", "worker"].iter().map(|name| processes[*name]["cpuMsPerMessage"].as_f64().unwrap_or(0.0)).sum();
        summary["processes"] = Value::Object(processes);
        summary["heraldCpuMsPerMessage"] = json!(round(herald_ms, 3));
        let memory = |pid| {
            let (rss, peak) = procfs::memory_mib(pid);
            json!({ "rssMiB": rss, "peakRssMiB": peak })
        };
        summary["memory"] = json!({ "api": memory(api.pid()), "worker": memory(worker.pid()) });
        summary["phase"] = json!(phase);
        print_phase(&summary);
        results.push(summary);
    }
    let record = json!({
        "measuredAt": chrono::Utc::now().to_rfc3339(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "secondsPerPhase": seconds,
        "postgresSettings": pg_settings.trim(),
        "binary": binary.display().to_string(),
        "phases": results,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).expect("create the results directory");
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&record).expect("JSON")).expect("write the results");
    println!("e2e: results in {}", out.display());
    drop((worker, api, provider));
    drop((node, pg));
    let _ = std::fs::remove_dir_all(dir.join("pg/data"));
    let _ = std::fs::remove_dir_all(dir.join("rabbit/mnesia"));
}

/// What the stack spends with nothing to do (the rollup and queue-watch jobs, the database's
/// and the broker's housekeeping): the floor under every per-message figure.
async fn idle(pids: &[(&'static str, u32)], ticks: f64, seconds: u64) -> Value {
    let before = cpu(pids, ticks);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = cpu(pids, ticks);
    let mut processes = serde_json::Map::new();
    let mut line = format!("e2e idle: cpu-seconds in {seconds}s:");
    for ((name, start), (_, end)) in before.parts.iter().zip(&after.parts) {
        processes.insert(name.to_string(), json!({ "cpuSeconds": round(end - start, 2) }));
        line.push_str(&format!(" {name} {:.2}", end - start));
    }
    println!("{line}");
    json!({ "phase": "idle", "seconds": seconds, "processes": processes })
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// Runs `herald loadtest` for one phase; its summary, and the CPU-seconds it spent itself.
async fn loadtest(
    binary: &Path,
    env: &[(String, String)],
    provider_url: &str,
    rate: &str,
    seconds: u64,
    json_path: &Path,
    ticks: f64,
) -> (Value, f64) {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(env.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .args(["loadtest", "loadtest-email", "--rate", rate, "--duration-seconds", &seconds.to_string()])
        .args(["--endpoint", &std::env::var("HERALD_E2E_ENDPOINT").unwrap_or_else(|_| "unitary".into())])
        .args(["--provider", provider_url, "--drain-seconds", "20", "--json"])
        .arg(json_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Its CPU is what this process's reaped children gain while it runs (the stack's processes
    // are not waited for until the end).
    let before = procfs::reaped_children_seconds(ticks);
    let mut child = command.spawn().expect("run herald loadtest");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for herald loadtest") {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spent = procfs::reaped_children_seconds(ticks) - before;
    assert!(status.success(), "herald loadtest --rate {rate} failed");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(json_path).expect("the load test's JSON")).expect("JSON");
    (summary, spent)
}

fn print_phase(summary: &Value) {
    let process = |name: &str| {
        let part = &summary["processes"][name];
        format!("{name} {}s ({} ms/msg)", part["cpuSeconds"], part["cpuMsPerMessage"])
    };
    println!(
        "e2e {:>4}: accepted {}/s, sent {}/s, lost {}, duplicated {}; due→provider p50 {} p99 {} p99.9 {} ms; accept p99 {} ms\n          cpu: {}; {}; {}; {}; {}; {}; herald {} ms/msg; rss api {} MiB worker {} MiB",
        summary["phase"].as_str().unwrap_or(""),
        summary["acceptedPerSecond"],
        summary["sentPerSecond"],
        summary["lost"],
        summary["duplicated"],
        summary["dueToProviderMs"]["p50"],
        summary["dueToProviderMs"]["p99"],
        summary["dueToProviderMs"]["p999"],
        summary["acceptLatencyMs"]["p99"],
        process("api"),
        process("worker"),
        process("postgres"),
        process("rabbitmq"),
        process("fake-provider"),
        process("loadtest"),
        summary["heraldCpuMsPerMessage"],
        summary["memory"]["api"]["peakRssMiB"],
        summary["memory"]["worker"]["peakRssMiB"],
    );
}
