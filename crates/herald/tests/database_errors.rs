//! Start-up against a database that is set up wrong: the error names the cause and what to do,
//! never a bare "db error", and never quotes the password.

use std::process::{Command, Output};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

async fn migrate(url: &str) -> Output {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(HERALD)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HERALD_DATABASE_URL", url)
            .arg("migrate")
            .output()
            .expect("run herald migrate")
    })
    .await
    .unwrap()
}

fn failure(output: &Output) -> String {
    assert!(!output.status.success(), "herald migrate succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("s3cret-pw"), "the password is quoted: {stderr}");
    assert!(!stderr.contains("db error"), "a bare db error: {stderr}");
    stderr
}

/// The server of `HERALD_TEST_DATABASE_URL` (default: the local one), as host and port.
fn server() -> (String, u16) {
    let url = std::env::var("HERALD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let config: tokio_postgres::Config = url.parse().expect("HERALD_TEST_DATABASE_URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".into(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

#[tokio::test]
async fn a_missing_database_is_named_with_the_command_that_creates_it() {
    let (host, port) = server();
    let name = format!("herald_missing_{}", std::process::id());
    let stderr = failure(&migrate(&format!("postgres://postgres:s3cret-pw@{host}:{port}/{name}")).await);
    assert!(stderr.contains(&format!("3D000 FATAL: database \"{name}\" does not exist")), "{stderr}");
    assert!(stderr.contains(&format!("createdb -h {host} -p {port} -U postgres {name}")), "{stderr}");
}

/// A PostgreSQL server that refuses every password, as one with `scram-sha-256` auth does
/// (the shared test server trusts everyone, so it cannot show this).
async fn refusing_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                loop {
                    let length = stream.read_i32().await.unwrap_or(0);
                    let mut message = vec![0u8; usize::try_from(length - 4).unwrap_or(0)];
                    if stream.read_exact(&mut message).await.is_err() {
                        return;
                    }
                    // An SSLRequest (code 80877103) is declined; the startup message is refused.
                    if message.len() == 4 && message == 80_877_103i32.to_be_bytes() {
                        let _ = stream.write_all(b"N").await;
                        continue;
                    }
                    let mut fields = Vec::new();
                    for (kind, value) in [
                        (b'S', "FATAL"),
                        (b'V', "FATAL"),
                        (b'C', "28P01"),
                        (b'M', "password authentication failed for user \"herald\""),
                    ] {
                        fields.push(kind);
                        fields.extend_from_slice(value.as_bytes());
                        fields.push(0);
                    }
                    fields.push(0);
                    let mut reply = vec![b'E'];
                    reply.extend_from_slice(&(i32::try_from(fields.len()).unwrap() + 4).to_be_bytes());
                    reply.extend_from_slice(&fields);
                    let _ = stream.write_all(&reply).await;
                    return;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_refused_password_says_so_and_names_the_user() {
    let port = refusing_server().await;
    let stderr = failure(&migrate(&format!("postgres://herald:s3cret-pw@127.0.0.1:{port}/herald")).await);
    assert!(stderr.contains("28P01 FATAL: password authentication failed"), "{stderr}");
    assert!(stderr.contains("refused the password of user \"herald\""), "{stderr}");
}

#[tokio::test]
async fn an_unknown_role_says_so_and_names_the_user() {
    let (host, port) = server();
    let stderr = failure(&migrate(&format!("postgres://no_such_role_here:s3cret-pw@{host}:{port}/postgres")).await);
    assert!(stderr.contains("28000 FATAL"), "{stderr}");
    assert!(stderr.contains("refused user \"no_such_role_here\""), "{stderr}");
}

#[tokio::test]
async fn a_host_where_nothing_listens_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stderr = failure(&migrate(&format!("postgres://herald:s3cret-pw@127.0.0.1:{port}/herald")).await);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(
        stderr.contains(&format!("nothing accepts connections at 127.0.0.1:{port}: is PostgreSQL running there?")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_password_with_an_unencoded_at_sign_is_never_echoed_as_the_host() {
    let stderr = failure(&migrate("postgres://postgres:s3cret@s3cret-pw@127.0.0.1:5432/herald").await);
    assert!(!stderr.contains("s3cret"), "part of the password is printed: {stderr}");
    assert!(stderr.contains("must be percent-encoded"), "{stderr}");
}
