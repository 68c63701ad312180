//! Traces and logs of real `herald api` and `herald worker` processes: one trace runs from the
//! API request through RabbitMQ to the worker's provider call, and no address, phone number or
//! OTP appears in any log line or exported span — at debug level for every crate.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use herald_tests::fixtures::otp_sms;
use herald_tests::{TestApp, TestOptions, execution};
use serde_json::{Value, json};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// An OTLP/HTTP receiver (JSON encoding) on a loopback port; returns its URL and what it got.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let router = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let parsed: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                sink.lock().unwrap().push(parsed);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, received)
}

/// Every exported span: (trace id, span id, parent span id, name, attributes as text).
fn spans(received: &[Value]) -> Vec<(String, String, String, String, String)> {
    let mut spans = Vec::new();
    for export in received {
        for resource in export["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                    spans.push((text("traceId"), text("spanId"), text("parentSpanId"), text("name"), span.to_string()));
                }
            }
        }
    }
    spans
}

fn herald_process(app: &TestApp, role: &str, otlp: &str, log: &std::path::Path, extra: &[(&str, String)]) -> Child {
    let file = std::fs::File::create(log).unwrap();
    Command::new(HERALD)
        .arg(role)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HERALD_DATABASE_URL", &app.database.url)
        .env("HERALD_AMQP_URL", herald_tests::broker::amqp_url())
        .env("HERALD_AMQP_PREFIX", &app.topology().topology.prefix)
        .env("HERALD_RETRY_TIERS_SECONDS", "1,2")
        .env("HERALD_METRICS_ADDR", "127.0.0.1:0")
        .env("HERALD_MIGRATE_ON_START", "false")
        .env("HERALD_LOG", "debug")
        .env("HERALD_LOG_FORMAT", "json")
        .env("HERALD_OTLP_ENDPOINT", otlp)
        .env("HERALD_OTLP_PROTOCOL", "http/json")
        .envs(extra.iter().map(|(name, value)| (*name, value.as_str())))
        .stderr(Stdio::from(file))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGTERM, then a clean exit within 30 s.
async fn stop(mut child: Child) {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a herald process did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "a herald process exited with {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_crosses_the_broker_and_no_recipient_data_is_logged_or_exported() {
    let moto = herald_tests::moto::Moto::start().await;
    moto.verify_email_identity("no-reply@example.com").await;
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let sms = app.live_campaign(&otp_sms("otp")).await;
    let email = app
        .live_campaign(&json!({
            "name": "reset",
            "channel": "email",
            "identityNamespace": "email",
            "surface": { "fromAddress": "no-reply@example.com" },
            "content": {
                "subject": "Reset your password",
                "html": "<a href=\"{{ context.resetUrl }}\">Reset</a>",
                "text": "Reset here: {{ context.resetUrl }}"
            }
        }))
        .await;
    let (otlp, received) = otlp_receiver().await;
    let logs = tempdir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let key = app.key.clone();
    let api =
        herald_process(&app, "api", &otlp, &logs.join("api.log"), &[("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}"))]);
    let worker = herald_process(
        &app,
        "worker",
        &otlp,
        &logs.join("worker.log"),
        &[
            ("AWS_ENDPOINT_URL", moto.url.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(60), "the api did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Known secrets: phone numbers, email addresses, OTPs and a reset URL.
    let (phone, otp) = ("+33698765432", "860215");
    let (address, reset) = ("grace.hopper@navy.example", "https://example.com/reset/tok-5eCr3t");
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let executed = http
        .post(format!("{base}/im/executions/unitary"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .json(&execution("traced", &sms, &[(phone, json!({"otp": otp}))]))
        .send()
        .await
        .unwrap();
    assert_eq!(executed.status().as_u16(), 202);
    let emailed = http
        .post(format!("{base}/im/executions/unitary"))
        .bearer_auth(&key)
        .json(&execution("mail", &email, &[(address, json!({"resetUrl": reset}))]))
        .send()
        .await
        .unwrap();
    assert_eq!(emailed.status().as_u16(), 202);

    // Both messages reach moto; spans are exported in batches (every 5 s by default).
    let started = Instant::now();
    loop {
        let data = moto.data().await;
        let sent =
            data["sns"]["SMS"].as_array().map_or(0, Vec::len) + data["ses"]["Message"].as_array().map_or(0, Vec::len);
        let spans = spans(&received.lock().unwrap());
        let provider_spans = spans.iter().filter(|s| s.3 == "SNS/Publish" || s.3 == "SESv2/SendEmail").count();
        if sent >= 2 && provider_spans >= 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "sent {sent}, {provider_spans} provider spans");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(worker).await;
    stop(api).await;

    let spans = spans(&received.lock().unwrap());
    let find = |name: &str, trace: &str| {
        spans
            .iter()
            .find(|s| s.3 == name && s.0 == trace)
            .unwrap_or_else(|| panic!("no {name} span in {trace}: {spans:#?}"))
    };
    // The caller's trace continues through the API request, the publish, the consume and the send.
    let request = find("POST /im/executions/unitary", caller_trace);
    assert_eq!(request.2, "00f067aa0ba902b7", "the API span's parent is the caller's span");
    let publish = spans.iter().find(|s| s.3.starts_with("publish ") && s.0 == caller_trace).expect("publish span");
    let process = spans.iter().find(|s| s.3.starts_with("process ") && s.0 == caller_trace).expect("process span");
    assert_eq!(process.2, publish.1, "the worker's span is a child of the publish, across the broker");
    let call = find("SNS/Publish", caller_trace);
    assert!(call.4.contains("\"rpc.system\"") && call.4.contains("aws-api"), "{}", call.4);
    assert!(process.4.contains("messaging.destination.name") && request.4.contains("http.route"));
    // The email went through a trace of its own, with the same shape.
    let email_call = spans.iter().find(|s| s.3 == "SESv2/SendEmail").expect("an SES span");
    assert!(spans.iter().any(|s| s.3 == "POST /im/executions/unitary" && s.0 == email_call.0));

    let api_logs = std::fs::read_to_string(logs.join("api.log")).unwrap();
    let worker_logs = std::fs::read_to_string(logs.join("worker.log")).unwrap();
    assert!(worker_logs.lines().count() > 20, "debug logs were captured: {worker_logs}");
    let exported: String = received.lock().unwrap().iter().map(Value::to_string).collect();
    for secret in [phone, "33698765432", otp, address, "grace.hopper", reset, "tok-5eCr3t"] {
        for (name, text) in [("api logs", &api_logs), ("worker logs", &worker_logs), ("exported spans", &exported)] {
            assert!(!text.contains(secret), "{secret} appears in the {name}");
        }
    }
    // The messages themselves did carry them: the test's secrets are real.
    let data = moto.data().await;
    assert!(data.to_string().contains(otp) && data.to_string().contains("tok-5eCr3t"));
    let _ = std::fs::remove_dir_all(&logs);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-telemetry-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_sample_ratio_outside_zero_to_one_is_refused_at_start() {
    let output = Command::new(HERALD)
        .args(["migrate"])
        .env_clear()
        .env("HERALD_OTLP_SAMPLE_RATIO", "1.5")
        .env("HERALD_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`1.5` is not a ratio between 0 and 1"), "{stderr}");
}

#[test]
fn an_invalid_log_filter_is_reported_not_silently_replaced() {
    let output = Command::new(HERALD)
        .args(["probe", "--url", "http://127.0.0.1:1/"])
        .env_clear()
        .env("HERALD_LOG", "info,herald=[")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a valid filter"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_is_reported_and_does_not_hold_the_api() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let logs = tempdir();
    let api = herald_process(
        &app,
        "api",
        &format!("http://127.0.0.1:{closed}"),
        &logs.join("api.log"),
        &[("HERALD_HTTP_ADDR", format!("127.0.0.1:{port}")), ("HERALD_LOG", "info".into())],
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(60), "the api did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Spans of this request cannot be delivered; the batch exporter reports that within seconds.
    let reply = http.get(format!("{base}/campaigns")).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(logs.join("api.log")).unwrap();
        if text.contains("trace export failing") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no warning about the collector: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopping = Instant::now();
    stop(api).await;
    assert!(stopping.elapsed() < Duration::from_secs(15), "shutdown waited {:?} for the collector", stopping.elapsed());
    let _ = std::fs::remove_dir_all(&logs);
}
