//! moto, the AWS emulator, on a free loopback port for one test: the real SES v2 and SNS SDK
//! clients talk to it, and its `/moto-api/data.json` says what was sent.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_worker::providers::aws::{AwsSettings, load_config};
use serde_json::Value;

#[derive(Debug)]
pub struct Moto {
    pub url: String,
    child: Child,
}

/// The `moto_server` to run: `HERALD_MOTO_SERVER`, else the one `scripts/bootstrap` installs in
/// the repository's `.venv`, else whichever is on PATH.
fn moto_server() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("HERALD_MOTO_SERVER") {
        return path.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    if venv.exists() { venv } else { "moto_server".into() }
}

impl Moto {
    /// Starts `moto_server`; fails loudly when it is not installed (`scripts/bootstrap`).
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("moto_server could not start ({error}); install it with `scripts/bootstrap` (or set HERALD_MOTO_SERVER)")
            });
        let moto = Self { url: format!("http://127.0.0.1:{port}"), child };
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{}/moto-api/", moto.url)).send().await.map(|r| r.status().is_success()).ok()
            != Some(true)
        {
            assert!(started.elapsed() < Duration::from_secs(30), "moto_server did not answer on {}", moto.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    /// SDK configuration pointing at this emulator.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let settings = AwsSettings {
            endpoint_url: Some(self.url.clone()),
            region: Some("us-east-1".into()),
            static_credentials: Some(("test".into(), "test".into())),
            ..AwsSettings::default()
        };
        load_config(&settings).await
    }

    /// Lets SES send from `address` (real SES: a verified identity).
    pub async fn verify_email_identity(&self, address: &str) {
        aws_sdk_sesv2::Client::new(&self.sdk_config().await)
            .create_email_identity()
            .email_identity(address)
            .send()
            .await
            .expect("moto creates the email identity");
    }

    /// Everything moto recorded.
    pub async fn data(&self) -> Value {
        reqwest::get(format!("{}/moto-api/data.json", self.url)).await.unwrap().json().await.unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
