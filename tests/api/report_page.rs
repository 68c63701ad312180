//! The report page as a browser draws it: headless Chromium takes a screenshot of
//! `/campaigns/{id}/report.html` after a worker has sent and failed real executions, and the
//! screenshot must show the chart's sent (green) and failed (red) bars.
//!
//! Needs Debian's `chromium` (`apt-get install chromium`); without it the test fails, it does not skip.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode as HttpStatus, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_core::delivery::{ErrorClass, ProviderError};
use herald_tests::fixtures::otp_sms;
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution};
use herald_worker::providers::fake::ScriptedProvider;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// The chart's colours (crates/herald-api/src/reports/page.rs), drawn with crisp edges.
const SENT: [u8; 3] = [0x2e, 0x7d, 0x32];
const FAILED: [u8; 3] = [0xc6, 0x28, 0x28];

const EXECUTIONS: usize = 10;
const RECIPIENTS: usize = 2;
/// Every fourth provider call is refused for good.
const FAILED_SENDS: usize = EXECUTIONS * RECIPIENTS / 4;

const CHROMIUM: &str = "chromium";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the API is reached through an operator's authenticating reverse proxy.
#[derive(Debug, Clone)]
struct Upstream {
    http: reqwest::Client,
    address: String,
    key: String,
}

/// Forwards a GET to the API with the bearer key added, and the reply's status, content type and body back.
async fn forward(State(upstream): State<Upstream>, uri: Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let reply = match upstream.http.get(format!("{}{path}", upstream.address)).bearer_auth(&upstream.key).send().await {
        Ok(reply) => reply,
        Err(error) => return (HttpStatus::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let status = HttpStatus::from_u16(reply.status().as_u16()).unwrap_or(HttpStatus::BAD_GATEWAY);
    let content_type = reply
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok());
    let body = reply.bytes().await.unwrap_or_default();
    let mut response = (status, body).into_response();
    if let Some(content_type) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    response
}

/// Serves the proxy on a loopback port and returns its base URL. A command-line browser cannot
/// send an `Authorization` header; in production a reverse proxy in front of the API adds it.
async fn authenticating_proxy(app: &TestApp) -> String {
    let upstream = Upstream { http: app.http.clone(), address: app.address.clone(), key: app.key.clone() };
    let router = Router::new().route("/{*path}", get(forward)).with_state(upstream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy to port 0");
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// Takes a screenshot of `url` with headless Chromium into `png`, in a fresh profile; panics
/// (with Chromium's output) when it is missing, fails or takes longer than [`CHROMIUM_TIMEOUT`].
fn screenshot(url: &str, png: &Path) {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("report-page-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let log_path = scratch.join("chromium.log");
    let log = File::create(&log_path).unwrap();
    let _ = std::fs::remove_file(png);
    let mut child = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1100"])
        .arg(format!("--user-data-dir={}", scratch.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| {
            let _ = std::fs::remove_dir_all(&scratch);
            panic!("cannot run `{CHROMIUM}` ({error}); install Debian's Chromium with `apt-get install chromium`")
        });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium took longer than {CHROMIUM_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        status.success() && png.is_file(),
        "chromium failed ({status}), no screenshot at {}:\n{output}",
        png.display()
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// What a screenshot holds of one exact colour.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    pixels: usize,
    /// The longest vertical run of the colour: a bar, not a legend swatch.
    tallest: usize,
}

/// Decodes `png` and measures `colours` in it.
fn coverage(png: &Path, colours: &[[u8; 3]]) -> (u32, u32, Vec<Coverage>) {
    let mut decoder = png::Decoder::new(BufReader::new(File::open(png).unwrap()));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buffer = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut buffer).expect("a decodable PNG");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "a colour screenshot, not {:?}", info.color_type);
    let (width, height) = (info.width as usize, info.height as usize);
    let pixel = |x: usize, y: usize| {
        let at = y * info.line_size + x * channels;
        [buffer[at], buffer[at + 1], buffer[at + 2]]
    };
    let mut found = vec![Coverage::default(); colours.len()];
    for x in 0..width {
        let mut runs = vec![0; colours.len()];
        for y in 0..height {
            let here = pixel(x, y);
            for ((colour, run), coverage) in colours.iter().zip(&mut runs).zip(&mut found) {
                if here == *colour {
                    *run += 1;
                    coverage.pixels += 1;
                    coverage.tallest = coverage.tallest.max(*run);
                } else {
                    *run = 0;
                }
            }
        }
    }
    (info.width, info.height, found)
}

// Multi-threaded: the in-process API, worker and proxy keep serving while Chromium runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_report_page_shows_the_chart_in_a_browser() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let provider = Arc::new(ScriptedProvider::new());
    let refused = || Err(ProviderError::new(ErrorClass::Permanent, "InvalidParameter", "not a mobile number"));
    provider.script((0..EXECUTIONS * RECIPIENTS).map(|call| if call % 4 == 3 { refused() } else { Ok(()) }));
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    for n in 0..EXECUTIONS {
        let recipients: Vec<(String, serde_json::Value)> =
            (0..RECIPIENTS).map(|r| (format!("+336{n:04}{r:04}"), json!({"otp": format!("{n}{r}")}))).collect();
        let recipients: Vec<(&str, serde_json::Value)> =
            recipients.iter().map(|(a, c)| (a.as_str(), c.clone())).collect();
        let body = execution(&format!("page-{n}"), &campaign, &recipients);
        let reply = app.post("/im/executions/unitary", &body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let sent = EXECUTIONS * RECIPIENTS - FAILED_SENDS;
    let started = Instant::now();
    loop {
        let reply = app.get(&format!("/campaigns/{campaign}/report")).await;
        let sms = &reply.body["channels"][0];
        if sms["sent"] == sent && sms["failed"]["total"] == FAILED_SENDS {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;

    let proxy = authenticating_proxy(&app).await;
    let url = format!("{proxy}/campaigns/{campaign}/report.html");
    // Kept where it can be looked at: target/report-page.png.
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let png = target_tmp.parent().unwrap_or(target_tmp).join("report-page.png");
    let shot = png.clone();
    if let Err(error) = tokio::task::spawn_blocking(move || screenshot(&url, &shot)).await {
        std::panic::resume_unwind(error.into_panic());
    }

    let (width, height, found) = coverage(&png, &[SENT, FAILED]);
    let (green, red) = (found[0], found[1]);
    println!("{}: {width}x{height}, sent {green:?}, failed {red:?}", png.display());
    // 15 of 20 sends and 5 failures in one bucket of an axis to 20: bars about 210 and 70 px tall.
    assert!(green.pixels > 500 && green.tallest > 100, "no sent bar in {}: {green:?}", png.display());
    assert!(red.pixels > 200 && red.tallest > 30, "no failed bar in {}: {red:?}", png.display());
}
