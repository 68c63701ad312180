//! The key lifecycle as operators meet it: `herald api` processes sharing a database while the
//! bootstrap key changes, `herald keys list|rotate|revoke`, and a database from before it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_core::Scope;
use herald_tests::TestDatabase;
use reqwest::StatusCode;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn herald(database: &TestDatabase) -> Command {
    let mut command = Command::new(HERALD);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERALD_DATABASE_URL", &database.url)
        // No broker here: the API serves management routes without one.
        .env("HERALD_AMQP_URL", format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()));
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `herald api` process, killed when dropped (also when a test fails half-way).
struct Api {
    child: Child,
    base: String,
}

impl Api {
    async fn start(database: &TestDatabase, bootstrap: Option<&str>) -> Self {
        let port = free_port();
        let mut command = herald(database);
        command.arg("api").env("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}")).stderr(Stdio::piped());
        if let Some(key) = bootstrap {
            command.env("HERALD_BOOTSTRAP_API_KEY", key);
        }
        let mut api = Self { child: command.spawn().unwrap(), base: format!("http://127.0.0.1:{port}") };
        let started = Instant::now();
        // `/healthz`: readiness also wants the broker, which these tests do without.
        while reqwest::get(format!("{}/healthz", api.base)).await.map(|r| r.status()).ok() != Some(StatusCode::OK) {
            assert!(started.elapsed() < Duration::from_secs(30), "the api did not come up");
            assert!(api.child.try_wait().unwrap().is_none(), "the api exited early: {}", api.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        api
    }

    async fn status(&self, key: &str) -> StatusCode {
        let client = reqwest::Client::new();
        client.get(format!("{}/campaigns", self.base)).bearer_auth(key).send().await.unwrap().status()
    }

    /// Polls until `key` gets 401 here; panics after `within`.
    async fn refuses_within(&self, key: &str, within: Duration) -> Duration {
        let started = Instant::now();
        while self.status(key).await != StatusCode::UNAUTHORIZED {
            assert!(started.elapsed() < within, "the key still works after {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    /// Stops the process and returns what it logged.
    fn logs(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut logs = String::new();
        if let Some(stderr) = self.child.stderr.as_mut() {
            let _ = std::io::Read::read_to_string(stderr, &mut logs);
        }
        logs
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn sql(database: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_short_bootstrap_key_is_refused_at_start_up_without_being_logged() {
    let database = TestDatabase::create().await;
    let output = herald(&database)
        .args(["api", "--http-addr", "127.0.0.1:0"])
        .env("HERALD_BOOTSTRAP_API_KEY", "hk_tiny")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("at least 12 characters"), "{stderr}");
    assert!(!stderr.contains("hk_tiny"), "{stderr}");
}

#[tokio::test]
async fn changing_the_bootstrap_key_retires_the_old_one_on_every_api_process() {
    let database = TestDatabase::create().await;
    let (old, new) = ("hk_first_bootstrap_key", "hk_second_bootstrap_key");
    let first = Api::start(&database, Some(old)).await;
    assert_eq!(first.status(old).await, StatusCode::OK, "and cached by the first process");

    let second = Api::start(&database, Some(new)).await;
    let took = first.refuses_within(old, Duration::from_secs(1)).await;
    println!("the old bootstrap key was refused by the first process {took:?} after the second was up");
    assert_eq!(second.status(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!((first.status(new).await, second.status(new).await), (StatusCode::OK, StatusCode::OK));

    // Only a slow, salted hash of a chosen key is stored; never a fast one.
    let client = sql(&database).await;
    let rows =
        client.query("SELECT key_hash, key_kdf, revoked_at IS NULL FROM api_keys WHERE bootstrap", &[]).await.unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.get::<_, Option<Vec<u8>>>(0), None);
        assert!(row.get::<_, Option<String>>(1).is_some_and(|kdf| kdf.starts_with("$argon2id$")));
    }
    assert_eq!(rows.iter().filter(|row| row.get::<_, bool>(2)).count(), 1, "one active bootstrap key");

    // A process still configured with the old key (restarting mid-rollout) revives nothing and
    // retires nothing.
    let mut stale = Api::start(&database, Some(old)).await;
    assert_eq!(stale.status(old).await, StatusCode::UNAUTHORIZED);
    assert_eq!((stale.status(new).await, first.status(new).await), (StatusCode::OK, StatusCode::OK));
    let logs = stale.logs();
    assert!(logs.contains("names a revoked key"), "{logs}");
    assert!(!logs.contains(old) && !logs.contains(new), "keys are never logged: {logs}");
}

fn run(database: &TestDatabase, args: &[&str]) -> std::process::Output {
    herald(database).args(args).output().unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn listed(database: &TestDatabase, args: &[&str]) -> Vec<serde_json::Value> {
    let out = stdout(&run(database, &[&["keys", "list"], args].concat()));
    out.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test]
async fn keys_are_listed_rotated_and_revoked_from_the_command_line() {
    let database = TestDatabase::create().await;
    let bootstrap = "hk_command_line_bootstrap";
    let api = Api::start(&database, Some(bootstrap)).await;
    let created = stdout(&run(
        &database,
        &["keys", "create", "--sandbox", "default", "--scopes", "campaigns:read", "--name", "ci"],
    ));
    let key = created.trim_end().to_string();
    assert_eq!(api.status(&key).await, StatusCode::OK);

    let keys = listed(&database, &["--sandbox", "default"]);
    let text = serde_json::to_string(&keys).unwrap();
    assert!(!text.contains(&key) && !text.contains(bootstrap), "no secret is listed: {text}");
    let ci = keys.iter().find(|k| k["name"] == "ci").expect("listed");
    assert_eq!(ci["prefix"], key[..11]);
    assert!(ci["lastUsedAt"].is_string(), "{ci}");
    assert_eq!(
        (ci["sandbox"].as_str(), ci["scopes"].clone()),
        (Some("default"), serde_json::json!(["campaigns:read"]))
    );
    let boot = keys.iter().find(|k| k["bootstrap"] == true).expect("the bootstrap key is listed");
    assert_eq!(boot["prefix"], serde_json::Value::Null, "nothing of a chosen key is shown");
    assert_eq!(boot["scopes"].as_array().unwrap().len(), Scope::ALL.len());
    assert!(listed(&database, &["--sandbox", "elsewhere"]).is_empty());

    let id = ci["id"].as_str().unwrap();
    let rotated = stdout(&run(&database, &["keys", "rotate", id]));
    assert_eq!(rotated.lines().count(), 1, "only the new key on stdout: {rotated}");
    let new_key = rotated.trim_end();
    assert!(herald_store::api_keys::is_generated(new_key));
    api.refuses_within(&key, Duration::from_secs(1)).await;
    assert_eq!(api.status(new_key).await, StatusCode::OK);

    let new_id = listed(&database, &[]).iter().find(|k| k["name"] == "ci").unwrap()["id"].as_str().unwrap().to_string();
    let revoked = stdout(&run(&database, &["keys", "revoke", &new_id]));
    assert!(revoked.contains(&new_id) && revoked.contains("revokedAt"), "{revoked}");
    api.refuses_within(new_key, Duration::from_secs(1)).await;

    let unknown = run(&database, &["keys", "revoke", &uuid::Uuid::now_v7().to_string()]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no such key"));
    let again = run(&database, &["keys", "rotate", &new_id]);
    assert!(!again.status.success() && again.stdout.is_empty(), "a revoked key is not rotated");
    let everything = listed(&database, &["--include-revoked"]);
    assert_eq!(everything.len(), 3);
    assert_eq!(everything.iter().filter(|k| k["revokedAt"].is_string()).count(), 2);
    assert_eq!(everything.iter().find(|k| k["id"] == id).unwrap()["replacedBy"], new_id.as_str());
}

/// Applies the migrations before the key lifecycle (0010) by hand, as an older release did.
async fn migrate_before_key_lifecycle(database: &TestDatabase) {
    let client = sql(database).await;
    client
        .batch_execute("CREATE TABLE herald_schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .unwrap();
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../herald-store/migrations");
    let mut files: Vec<_> = std::fs::read_dir(directory).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let version: i32 = name[..4].parse().unwrap();
        if version < 10 {
            client.batch_execute(&std::fs::read_to_string(&file).unwrap()).await.unwrap();
            client
                .execute("INSERT INTO herald_schema_migrations (version, name) VALUES ($1, $2)", &[&version, &name])
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn bootstrap_keys_stored_by_an_older_release_are_rehashed_or_retired() {
    let database = TestDatabase::create().await;
    migrate_before_key_lifecycle(&database).await;
    let client = sql(&database).await;
    // What the old release left: a fast hash per bootstrap key ever configured, all active.
    let (older, current) = ("hk_older_local_key", "hk_local_development_only");
    let six: Vec<String> = Scope::ALL.iter().filter(|s| **s != Scope::KeysAdmin).map(|s| s.to_string()).collect();
    for key in [older, current] {
        client
            .execute(
                "INSERT INTO api_keys (id, sandbox, name, key_hash, scopes, created_at) VALUES ($1, 'default', 'bootstrap', $2, $3, now())",
                &[&uuid::Uuid::now_v7(), &herald_store::api_keys::digest(key), &six],
            )
            .await
            .unwrap();
    }
    let store = database.store();
    store.migrate().await.unwrap();
    assert!(store.find_api_key(current).await.unwrap().is_some(), "still works before the api restarts");

    let api = Api::start(&database, Some(current)).await;
    assert_eq!(api.status(current).await, StatusCode::OK);
    assert_eq!(api.status(older).await, StatusCode::UNAUTHORIZED, "the other bootstrap key is retired");
    let reply = reqwest::Client::new().get(format!("{}/api-keys", api.base)).bearer_auth(current).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK, "and has the new keys:admin scope");

    let rows = client
        .query("SELECT key_hash, key_kdf, revoked_at IS NULL FROM api_keys WHERE bootstrap ORDER BY id", &[])
        .await
        .unwrap();
    let state: Vec<(bool, bool, bool)> = rows
        .iter()
        .map(|row| (row.get::<_, Option<Vec<u8>>>(0).is_some(), row.get::<_, Option<String>>(1).is_some(), row.get(2)))
        .collect();
    // No fast hash of a chosen key is left: the kept one is rehashed, the retired one forgotten.
    assert_eq!(state, [(false, false, false), (false, true, true)]);
}
