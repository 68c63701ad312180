//! A private RabbitMQ node for the fault suite, so that stopping and restarting "the broker"
//! never touches the machine's shared node on 5672 (other test binaries and developers use it).
//!
//! The node runs as the current user straight from `/usr/lib/rabbitmq/bin` rather than through
//! `/usr/sbin/rabbitmq-server`: Debian's wrapper switches to the `rabbitmq` user, whose HOME and
//! Erlang cookie belong to the shared node, and writes its output to the shared node's log dir.
//! Everything of ours lives in one directory: HOME (with our own Erlang cookie, so `rabbitmqctl`
//! can control only this node), the Mnesia data, logs, a config file with our listener and an
//! empty plugin list (no management plugin, so no clash on 15672), and an empty env file so
//! `/etc/rabbitmq/rabbitmq-env.conf` (which names the shared node) is not read.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";

/// How long a boot may take on a busy 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct RabbitNode {
    /// `herald-faults-<pid>@localhost`.
    pub name: String,
    /// The AMQP port.
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
    server: Option<Child>,
}

impl RabbitNode {
    /// Writes the node's files under `dir` and boots it. Blocking (run it off the runtime).
    pub fn start(dir: &Path) -> Self {
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: the fault suite needs the rabbitmq-server package (apt-get install rabbitmq-server)"
        );
        let home = dir.join("home");
        for sub in [&home, &dir.join("mnesia"), &dir.join("log")] {
            std::fs::create_dir_all(sub).expect("create the RabbitMQ node's directories");
        }
        let port = crate::free_port();
        let dist_port = crate::free_port();
        // Only our listener; guest may log in over loopback (the default, stated for clarity).
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users.guest = true\ndisk_free_limit.absolute = 10MB\n"
            ),
        )
        .expect("write rabbitmq.conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("write rabbitmq-env.conf");
        write_cookie(&home.join(".erlang.cookie"));
        let mut node = Self {
            name: format!("herald-faults-{}@localhost", std::process::id()),
            port,
            dist_port,
            dir: dir.to_path_buf(),
            server: None,
        };
        node.boot();
        node
    }

    /// The server process's id (the Erlang VM is in its process tree), while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The environment every RabbitMQ script needs to find this node and only this node.
    fn environment(&self, command: &mut Command) {
        let dir = &self.dir;
        command
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }

    /// Starts the server process and waits until it accepts AMQP connections.
    fn boot(&mut self) {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server-output.log"))
            .expect("open the RabbitMQ output log");
        let mut command = Command::new(SERVER);
        self.environment(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone a file handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|error| panic!("could not start {SERVER}: {error}"));
        self.server = Some(child);
        // The AMQP listener opens last in the boot sequence; await_startup then confirms it.
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.server.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!("the private RabbitMQ node exited during boot ({status}); see {}", self.dir.display());
            }
            assert!(
                started.elapsed() < BOOT_TIMEOUT,
                "the private RabbitMQ node did not boot; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.ctl(&["await_startup", "--timeout", "60"]).unwrap_or_else(|error| panic!("await_startup: {error}"));
    }

    /// Runs `rabbitmqctl -n NODE args`; the error is its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(CTL);
        self.environment(&mut command);
        let output = command.arg("-n").arg(&self.name).args(args).output().map_err(|error| error.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        if output.status.success() { Ok(text) } else { Err(format!("rabbitmqctl {args:?}: {text}")) }
    }

    /// Names of every queue on the node (empty if the node does not answer).
    pub fn queue_names(&self) -> Vec<String> {
        let listed = self.ctl(&["list_queues", "--quiet", "name"]).unwrap_or_default();
        listed.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_string).collect()
    }

    /// "Broker stop": the RabbitMQ application stops (every connection drops, ports close) while
    /// the Erlang node keeps running.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]).expect("stop_app");
    }

    /// "Broker start" after [`RabbitNode::stop_app`].
    pub fn start_app(&self) {
        self.ctl(&["start_app"]).expect("start_app");
        self.ctl(&["await_startup", "--timeout", "60"]).expect("await_startup after start_app");
    }

    /// A full node restart with the same data directory: the Erlang VM exits and boots again,
    /// recovering the durable quorum queues from disk.
    pub fn restart_node(&mut self) {
        self.stop_node();
        self.boot();
    }

    fn stop_node(&mut self) {
        if let Err(error) = self.ctl(&["stop"]) {
            eprintln!("faults: rabbitmqctl stop failed ({error}); killing the node's process");
            if let Some(child) = self.server.as_mut() {
                let _ = child.kill();
            }
        }
        if let Some(mut child) = self.server.take() {
            // `stop` returns once the node halts; reap the script process.
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for RabbitNode {
    /// Stops the node even when the suite panics, so no broker is left running on the machine.
    fn drop(&mut self) {
        if self.server.is_some() {
            self.stop_node();
        }
    }
}

/// A random Erlang cookie only the owner may read (Erlang refuses a cookie others can read).
fn write_cookie(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        return;
    }
    let cookie: String = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    let mut file = std::fs::File::create(path).expect("create the Erlang cookie");
    file.write_all(cookie.as_bytes()).expect("write the Erlang cookie");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400)).expect("restrict the Erlang cookie");
}

/// Stops the node a killed earlier run left behind in `dir` (its pid is in the directory name).
pub fn stop_leftover(dir: &Path, pid: u32) {
    let mut command = Command::new(CTL);
    command
        .env("HOME", dir.join("home"))
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .args(["-n", &format!("herald-faults-{pid}@localhost"), "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = command.status();
}
