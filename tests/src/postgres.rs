//! A private PostgreSQL cluster for the fault suite, so that restarting "the database" never
//! touches the machine's shared server on 5432, and for the end-to-end benchmark, so that the
//! database's CPU is its own and its settings are known.
//!
//! `initdb` and `postgres` refuse to run as root, so when the suite runs as root the cluster
//! belongs to the `postgres` OS user (`runuser -u postgres`), in a directory chowned to it;
//! otherwise it belongs to the current user. Trust authentication on loopback only.
//!
//! The fault suite's cluster has `fsync=off` ([`PgCluster::start`]): the suite restarts the
//! server cleanly (`-m fast` flushes everything), it never crashes the machine, and the 2-core
//! box is shared with the broker and five processes. The benchmark's keeps the durable defaults
//! ([`PgCluster::start_durable`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Debug)]
pub struct PgCluster {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    running: bool,
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// `program` as the `postgres` user when we are root (PostgreSQL refuses root), else as ourselves.
fn as_postgres(program: &Path) -> Command {
    let mut command = if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command.stdin(Stdio::null());
    command
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb` (or `HERALD_FAULTS_PG_BIN`).
fn binaries() -> PathBuf {
    if let Ok(bin) = std::env::var("HERALD_FAULTS_PG_BIN") {
        return PathBuf::from(bin);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no /usr/lib/postgresql/<version>/bin/initdb: the fault suite needs the postgresql server package")
    })
}

impl PgCluster {
    /// Creates and starts a cluster under `dir`, with `fsync=off`. Blocking (run it off the
    /// runtime).
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, "fsync = off\n")
    }

    /// A cluster with PostgreSQL's durable defaults (`fsync`, `synchronous_commit` on) and
    /// `settings` appended to its configuration: what a benchmark measures.
    pub fn start_durable(dir: &Path, settings: &str) -> Self {
        Self::start_with(dir, settings)
    }

    fn start_with(dir: &Path, extra: &str) -> Self {
        let bin = binaries();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create the PostgreSQL data directory");
        if running_as_root() {
            let chowned = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().expect("run chown");
            assert!(chowned.success(), "could not give {} to the postgres user", dir.display());
        }
        let port = crate::free_port();
        let cluster = Self { port, bin, log: dir.join("postgres.log"), data, running: false };
        let initdb = cluster
            .as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&cluster.data)
            .output()
            .expect("run initdb");
        assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        let settings = format!(
            "\n# herald fault suite\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nmax_connections = 300\n{extra}",
            dir.display()
        );
        let conf = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("write postgresql.conf");
        let mut cluster = cluster;
        cluster.start_server();
        cluster
    }

    /// A command for a PostgreSQL binary, run as the `postgres` user when we are root.
    fn as_postgres(&self, program: &str) -> Command {
        as_postgres(&self.bin.join(program))
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let output = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60"])
            .args(args)
            .output()
            .map_err(|error| error.to_string())?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {args:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    pub fn start_server(&mut self) {
        self.pg_ctl(&["start"]).unwrap_or_else(|error| panic!("{error}; see {}", self.log.display()));
        self.running = true;
    }

    /// A clean stop (`-m fast`: sessions are cut, the server checkpoints and exits).
    pub fn stop_server(&mut self) {
        self.pg_ctl(&["-m", "fast", "stop"]).unwrap_or_else(|error| panic!("{error}; see {}", self.log.display()));
        self.running = false;
    }

    /// Stops the server, leaves it down for `down`, starts it again. Blocking.
    pub fn restart(&mut self, down: Duration) {
        self.stop_server();
        std::thread::sleep(down);
        self.start_server();
    }

    /// The postmaster's process id (its backends are its children), while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        pid.lines().next()?.trim().parse().ok()
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgCluster {
    /// Stops the server even when the suite panics (`immediate`: nothing here needs keeping).
    fn drop(&mut self) {
        if self.running {
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        }
    }
}

/// Creates an empty database on the cluster at `admin_url` (the herald processes migrate it).
pub async fn create_database(admin_url: &str, name: &str) {
    let (client, connection) =
        tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await.expect("connect to the private cluster");
    tokio::spawn(connection);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the scenario's database");
}

/// Stops the cluster a killed earlier run left behind in `dir`.
pub fn stop_leftover(dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let _ = as_postgres(&binaries().join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
