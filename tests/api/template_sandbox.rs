//! Hostile templates against the real API, broker and worker: refused by review and preview,
//! and when forced live behind the review's back, failed within the render budget while the
//! worker keeps sending everyone else's messages on time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use herald_core::{Channel, Scope};
use herald_store::DeliveryKey;
use herald_tests::fixtures::{hostile_templates, otp_sms};
use herald_tests::worker::{TestWorker, fast_policy};
use herald_tests::{TestApp, TestOptions, execution};
use herald_worker::providers::fake::ScriptedProvider;
use herald_worker::providers::{EmailMessage, Provider, ProviderResult, PushMessage, Receipt, SmsMessage};
use lapin::options::BasicGetOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Replaces `path` of a campaign's live definition in the database, behind the review's back.
async fn force_live(app: &TestApp, campaign: &str, path: &[&str], value: Value) {
    herald_tests::force_live(&sql(app).await, campaign, path, value).await.expect("force the live version");
}

/// A connection to the test's database, for what the API does not show.
async fn sql(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Waits until the delivery is decided (not `sending`/`retrying`) and returns its status,
/// reason and last error.
async fn decided(app: &TestApp, execution_id: &str, within: Duration) -> (String, Option<String>, Option<String>) {
    let client = sql(app).await;
    let id = uuid::Uuid::parse_str(execution_id).unwrap();
    let started = Instant::now();
    loop {
        let row = client
            .query_opt("SELECT status, reason, last_error FROM deliveries WHERE execution_id = $1", &[&id])
            .await
            .unwrap();
        if let Some(row) = row
            && !matches!(row.get::<_, &str>(0), "sending" | "retrying")
        {
            return (row.get(0), row.get(1), row.get(2));
        }
        assert!(started.elapsed() < within, "execution {execution_id} not decided within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn execute_as(app: &TestApp, key: &str, campaign: &str, request: &str) -> String {
    let body = execution(request, campaign, &[("+33612345678", json!({"otp": "482913"}))]);
    let reply = app.call(Method::POST, "/im/executions/unitary", Some(key), Some(&body)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["executionId"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn hostile_templates_are_refused_by_review_and_by_the_preview_of_a_draft() {
    let app = TestApp::spawn().await;
    for (name, source, code) in hostile_templates() {
        let mut document = otp_sms(name);
        document["content"]["body"] = json!(source);
        let id = app.create_campaign(&document).await;
        let preview = app.post(&format!("/campaigns/{id}/preview"), &json!({"context": {"otp": "1"}})).await;
        preview.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "template-error");
        assert_eq!(preview.body["errors"][0]["code"], code, "{name}: {}", preview.body);
        assert_eq!(preview.body["errors"][0]["part"], "body", "{name}: {}", preview.body);
        let review = app.post(&format!("/campaigns/{id}/activate"), &json!(null)).await;
        assert_eq!(review.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {}", review.body);
        assert_eq!(review.body["problems"][0]["code"], code, "{name}: {}", review.body);
        assert_eq!(review.body["problems"][0]["pointer"], "/content/body", "{name}: {}", review.body);
    }
    // The API is still here, and answers at once.
    let started = Instant::now();
    assert_eq!(app.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn hostile_templates_forced_live_fail_within_the_budget_while_other_messages_are_sent_on_time() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let other_key = app.key_for("b", &Scope::ALL).await;
    let created = app.call(Method::POST, "/campaigns", Some(&other_key), Some(&otp_sms("other"))).await;
    let other = created.body["id"].as_str().unwrap().to_string();
    let activated = app.call(Method::POST, &format!("/campaigns/{other}/activate"), Some(&other_key), None).await;
    assert_eq!(activated.status, StatusCode::OK, "{}", activated.body);
    let mut hostile = Vec::new();
    for (name, source, _) in hostile_templates() {
        let campaign = app.live_campaign(&otp_sms(name)).await;
        force_live(&app, &campaign, &["content", "body"], json!(source)).await;
        // A preview of the live version checks it like a draft.
        let preview = app.post(&format!("/campaigns/{campaign}/preview?version=live"), &json!({})).await;
        preview.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "template-error");
        hostile.push((name, campaign));
    }
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;

    // Another sandbox's OTP, alone: the normal accept-to-send time (after one to warm the caches).
    let mut normal = Duration::ZERO;
    for n in 0..4 {
        let started = Instant::now();
        let execution_id = execute_as(&app, &other_key, &other, &format!("baseline-{n}")).await;
        assert_eq!(decided(&app, &execution_id, Duration::from_secs(10)).await.0, "sent");
        if n > 0 {
            normal = normal.max(provider.calls().last().unwrap().at.duration_since(started));
        }
    }

    // Every hostile message at once, then the other sandbox's OTP.
    let mut executions = Vec::new();
    for (name, campaign) in &hostile {
        executions.push((*name, Instant::now(), execute_as(&app, &app.key, campaign, name).await));
    }
    let started = Instant::now();
    let otp = execute_as(&app, &other_key, &other, "during").await;
    assert_eq!(decided(&app, &otp, Duration::from_secs(10)).await.0, "sent");
    let during = provider.calls().last().unwrap().at.duration_since(started);
    assert!(during <= normal + Duration::from_millis(100), "sent in {during:?} instead of {normal:?}");

    for (name, sent_at, execution_id) in executions {
        let (status, reason, last_error) = decided(&app, &execution_id, Duration::from_secs(10)).await;
        let took = sent_at.elapsed();
        assert_eq!((status.as_str(), reason.as_deref()), ("failed", Some("rendering-error")), "{name}");
        let last_error = last_error.unwrap_or_default();
        let expected = match name {
            "recursive-macro" => "`macro` is not allowed",
            "include" => "`include` is not allowed",
            "billion-iterations" => "1001001000 iterations",
            _ => "the limit is 1048576",
        };
        assert!(last_error.contains(expected), "{name}: {last_error}");
        assert!(took < Duration::from_secs(3), "{name} took {took:?}");
    }
    assert_eq!(provider.call_count(), 5, "the four baseline OTPs and the one sent meanwhile, nothing else");
    // The worker is still consuming.
    let after = execute_as(&app, &other_key, &other, "after").await;
    assert_eq!(decided(&app, &after, Duration::from_secs(10)).await.0, "sent");
    worker.stop().await;
}

#[tokio::test]
async fn budgets_the_review_cannot_see_stop_the_render_in_the_worker() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let mut document = otp_sms("sized-by-the-caller");
    // Passes review: how long the loops run and how big `context.a` grows, the caller decides.
    document["content"]["body"] = json!(
        "{% for i in range(end=context.n) %}{% for j in range(end=context.n) %}{% for k in range(end=context.n) %}\
         {% endfor %}{% endfor %}{% endfor %}{{ context.a | replace(from=\"a\", to=context.a) | replace(from=\"a\", to=context.a) \
         | replace(from=\"a\", to=context.a) | replace(from=\"a\", to=context.a) | length }} {{ context.otp }}"
    );
    let campaign = app.live_campaign(&document).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let run = |request: &str, n: u64, a: &str| {
        execution(request, &campaign, &[("+33612345678", json!({"otp": "1", "n": n, "a": a}))])
    };
    let mut outcomes = Vec::new();
    for (request, n, a) in [("iterations", 1000, "a"), ("bomb", 1, &*"a".repeat(62)), ("fine", 10, "aa")] {
        let started = Instant::now();
        let reply = app.post("/im/executions/unitary", &run(request, n, a)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        let execution_id = reply.body["executionId"].as_str().unwrap().to_string();
        outcomes.push((request, decided(&app, &execution_id, Duration::from_secs(10)).await, started.elapsed()));
    }
    for (request, (status, reason, last_error), took) in outcomes {
        let last_error = last_error.unwrap_or_default();
        match request {
            "iterations" => assert!(last_error.contains("more than 100000 loop iterations"), "{last_error}"),
            "bomb" => assert!(last_error.contains("the limit is 1048576"), "{last_error}"),
            _ => {
                assert_eq!(status, "sent");
                continue;
            }
        }
        assert_eq!((status.as_str(), reason.as_deref()), ("failed", Some("rendering-error")), "{request}");
        assert!(took < Duration::from_secs(3), "{request} took {took:?}");
    }
    assert_eq!(provider.calls()[0].body, "32 1", "the same template renders normal input");
    worker.stop().await;
}

/// Takes the OTP campaign's only queued message without acknowledging it, and drops the
/// connection, as a worker that dies does: the broker requeues it marked `redelivered`.
async fn hold_and_drop(app: &TestApp) {
    let connection = herald_tests::broker::connect().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = app.topology().queue(Channel::Sms);
    let held = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await.unwrap();
    assert!(held.is_some(), "the message is queued");
    let _ = connection.close(320, "worker died".into()).await;
}

async fn render_attempt_rows(app: &TestApp) -> i64 {
    sql(app).await.query_one("SELECT count(*) FROM render_attempts", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_message_whose_renders_keep_dying_is_dead_lettered_and_not_rendered_again() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let execution_id = execute_as(&app, &app.key, &campaign, "poison").await;
    hold_and_drop(&app).await;
    // A first redelivered render of it started and never finished: its worker died.
    let key = DeliveryKey {
        execution_id: uuid::Uuid::parse_str(&execution_id).unwrap(),
        recipient_index: 0,
        campaign_id: uuid::Uuid::parse_str(&campaign).unwrap(),
        channel: herald_core::Channel::Sms,
    };
    assert_eq!(app.store.start_redelivered_render(&key, chrono::Utc::now()).await.unwrap(), 1);

    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let (status, reason, last_error) = decided(&app, &execution_id, Duration::from_secs(10)).await;
    assert_eq!((status.as_str(), reason.as_deref()), ("failed", Some("rendering-error")));
    assert!(last_error.unwrap_or_default().contains("never finished"));
    let started = Instant::now();
    let dead = loop {
        let dead = app.store.list_dead_letters(Some("a"), None, None, 10).await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (dead[0].message_id.as_str(), dead[0].reason.as_str()),
        (format!("{execution_id}/0").as_str(), "rendering-error")
    );
    assert!(dead[0].last_error.as_deref().unwrap_or_default().contains("the worker rendering it died"));
    assert_eq!(provider.call_count(), 0);
    assert_eq!(render_attempt_rows(&app).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_message_redelivered_for_another_reason_is_rendered_and_sent() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let campaign = app.live_campaign(&otp_sms("otp")).await;
    let execution_id = execute_as(&app, &app.key, &campaign, "redelivered").await;
    hold_and_drop(&app).await;
    let provider = Arc::new(ScriptedProvider::new());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    assert_eq!(decided(&app, &execution_id, Duration::from_secs(10)).await.0, "sent");
    assert_eq!(provider.call_count(), 1);
    assert_eq!(render_attempt_rows(&app).await, 0, "a finished render leaves nothing behind");
    worker.stop().await;
}

#[tokio::test]
async fn a_slow_preview_is_a_422_and_does_not_hold_up_health_checks() {
    let app = TestApp::spawn().await;
    let mut document = otp_sms("slow");
    // Within the static budgets (99,000 iterations); each iteration scans a 960 KB string.
    document["content"]["body"] = json!(
        "{% set big = context.s | replace(from=\"a\", to=\"aaaaaaaaaaaaaaaa\") %}\
         {% for i in range(end=9000) %}{% for j in range(end=10) %}{% if \"zz\" in big %}z{% endif %}{% endfor %}{% endfor %}\
         {{ context.otp }}"
    );
    let id = app.create_campaign(&document).await;
    let app = Arc::new(app);
    let preview = {
        let app = Arc::clone(&app);
        let sample = json!({"context": {"otp": "1", "s": "a".repeat(60_000)}});
        tokio::spawn(async move { app.post(&format!("/campaigns/{id}/preview"), &sample).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(app.call(Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = preview.await.unwrap();
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "template-error");
    assert_eq!(reply.body["errors"][0]["code"], "render-budget", "{}", reply.body);
    assert_eq!(reply.body["errors"][0]["message"], "the render went over its budget: out of time");
    assert!(slowest < Duration::from_millis(200), "a health check took {slowest:?} during the preview");
}

/// Records the email messages it is given.
#[derive(Debug, Default)]
struct EmailRecorder(Mutex<Vec<EmailMessage>>);

impl Provider for EmailRecorder {
    fn send_email<'a>(&'a self, message: &'a EmailMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        self.0.lock().unwrap().push(message.clone());
        Box::pin(async { Ok(Receipt { provider_message_id: "recorded".into() }) })
    }
    fn send_sms<'a>(&'a self, _: &'a SmsMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        unreachable!("email only")
    }
    fn create_push_endpoint<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, ProviderResult<String>> {
        unreachable!("email only")
    }
    fn send_push<'a>(&'a self, _: &'a str, _: &'a PushMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        unreachable!("email only")
    }
}

#[tokio::test]
async fn line_breaks_never_reach_an_email_header() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let document = json!({
        "name": "welcome", "channel": "email", "identityNamespace": "email",
        "surface": { "fromAddress": "no-reply@example.com", "fromName": "Example" },
        "content": { "subject": "Welcome, {{ context.name }}", "text": "Hello" }
    });
    let campaign = app.live_campaign(&document).await;
    let mut other = document.clone();
    other["name"] = json!("forced");
    let forced = app.live_campaign(&other).await;
    force_live(&app, &forced, &["surface", "fromName"], json!("Example\r\nBcc: victim@example.com")).await;
    let provider = Arc::new(EmailRecorder::default());
    let worker = TestWorker::start(&app, provider.clone(), fast_policy()).await;
    let attack = json!({"name": "Jane\r\nBcc: victim@example.com\r\n"});
    let send = |campaign: &str, request: &str| execution(request, campaign, &[("jane@example.com", attack.clone())]);
    let sent = app.post("/im/executions/unitary", &send(&campaign, "subject")).await.body["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(decided(&app, &sent, Duration::from_secs(10)).await.0, "sent");
    assert_eq!(provider.0.lock().unwrap()[0].subject, "Welcome, Jane Bcc: victim@example.com");
    let refused = app.post("/im/executions/unitary", &send(&forced, "from-name")).await.body["executionId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, reason, last_error) = decided(&app, &refused, Duration::from_secs(10)).await;
    assert_eq!((status.as_str(), reason.as_deref()), ("failed", Some("rendering-error")));
    assert!(last_error.unwrap_or_default().contains("sender name"));
    assert_eq!(provider.0.lock().unwrap().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn one_sandboxs_slow_previews_never_take_every_turn_from_another() {
    let app = Arc::new(TestApp::spawn().await);
    let mut document = otp_sms("slow");
    document["content"]["body"] = json!(
        "{% set big = context.s | replace(from=\"a\", to=\"aaaaaaaaaaaaaaaa\") %}\
         {% for i in range(end=9000) %}{% for j in range(end=10) %}{% if \"zz\" in big %}z{% endif %}{% endfor %}{% endfor %}\
         {{ context.otp }}"
    );
    let slow = app.create_campaign(&document).await;
    let other_key = app.key_for("b", &Scope::ALL).await;
    let created = app.call(Method::POST, "/campaigns", Some(&other_key), Some(&otp_sms("quick"))).await;
    let quick = created.body["id"].as_str().unwrap().to_string();
    // Sandbox a floods the preview with renders that each run to the time budget.
    let flood: Vec<_> = (0..10)
        .map(|_| {
            let (app, slow) = (Arc::clone(&app), slow.clone());
            let sample = json!({"context": {"otp": "1", "s": "a".repeat(60_000)}});
            tokio::spawn(async move { app.post(&format!("/campaigns/{slow}/preview"), &sample).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let sample = json!({"context": {"otp": "2"}});
    let reply = app.call(Method::POST, &format!("/campaigns/{quick}/preview"), Some(&other_key), Some(&sample)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let waited = started.elapsed();
    for status in flood {
        let status = status.await.unwrap();
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::SERVICE_UNAVAILABLE, "{status}");
    }
    // At most one of a's renders (about the 1 s budget, more in a debug build) ahead of it.
    assert!(waited < Duration::from_millis(2500), "sandbox b's preview waited {waited:?}");
}
