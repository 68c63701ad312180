//! Input a hostile (or careless) tenant may send: strings PostgreSQL cannot store, broken paths,
//! oversize URIs, foreign cursors. Each is a 4xx problem naming what is wrong, never a 500, and
//! every answer tells caches and browsers to keep out.

use herald_tests::fixtures::{otp_sms, password_reset_email};
use herald_tests::{Reply, TestApp, TestOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

/// A JSON pointer token for `key` (RFC 6901).
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Every copy of `value` with a NUL put into one of its strings or member names, with the
/// pointer of that string or member.
fn with_a_nul(value: &Value) -> Vec<(Value, String)> {
    let mut variants = Vec::new();
    match value {
        Value::String(text) => variants.push((Value::String(format!("{text}\u{0}x")), String::new())),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                for (variant, pointer) in with_a_nul(item) {
                    let mut copy = items.clone();
                    copy[index] = variant;
                    variants.push((Value::Array(copy), format!("/{index}{pointer}")));
                }
            }
        }
        Value::Object(members) => {
            for (key, member) in members {
                let renamed: Map<String, Value> = members
                    .iter()
                    .map(|(k, v)| (if k == key { format!("{k}\u{0}") } else { k.clone() }, v.clone()))
                    .collect();
                variants.push((Value::Object(renamed), format!("/{}\u{0}", token(key))));
                for (variant, pointer) in with_a_nul(member) {
                    let mut copy = members.clone();
                    copy.insert(key.clone(), variant);
                    variants.push((Value::Object(copy), format!("/{}{pointer}", token(key))));
                }
            }
        }
        _ => {}
    }
    variants
}

#[track_caller]
fn assert_refused_at(reply: &Reply, pointer: &str) {
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    let pointers: Vec<&str> =
        reply.body["errors"].as_array().unwrap().iter().filter_map(|error| error["pointer"].as_str()).collect();
    assert!(pointers.contains(&pointer), "{pointer:?} not named in {}", reply.body);
}

/// Sends every NUL variant of `body` to `method path` and checks each is refused at its place.
async fn each_nul_is_refused(app: &TestApp, method: Method, path: &str, body: &Value) -> usize {
    let variants = with_a_nul(body);
    for (variant, pointer) in &variants {
        let reply = app.call(method.clone(), path, Some(&app.key), Some(variant)).await;
        assert_refused_at(&reply, pointer);
    }
    variants.len()
}

#[tokio::test]
async fn a_nul_in_any_string_or_member_name_of_a_campaign_is_a_400_naming_it() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("reset");
    document["schedule"] = json!({"startDate": "2030-01-01T00:00:00Z"});
    assert!(each_nul_is_refused(&app, Method::POST, "/campaigns", &document).await > 20);
    let id = app.create_campaign(&document).await;
    let patch = json!({"description": "new", "content": {"subject": "Hello"}, "surface": {"fromName": "Acme"}});
    each_nul_is_refused(&app, Method::PATCH, &format!("/campaigns/{id}"), &patch).await;
    each_nul_is_refused(&app, Method::POST, &format!("/campaigns/{id}/duplicate"), &json!({"name": "copy"})).await;
    let preview = json!({"profile": {"person": {"name": {"firstName": "Jane"}}}, "context": {"resetUrl": "u"}});
    each_nul_is_refused(&app, Method::POST, &format!("/campaigns/{id}/preview"), &preview).await;
    // Nothing was written by any of them.
    assert_eq!(app.get("/campaigns").await.body["items"].as_array().unwrap().len(), 1);
    let nul_in_the_middle = app.post("/campaigns", &json!({"name": "a\u{0}b", "channel": "email"})).await;
    assert_refused_at(&nul_in_the_middle, "/name");
    // A backslash then `u0000` is text, not a NUL.
    app.create_campaign(&password_reset_email("literally \\u0000")).await;
}

#[tokio::test]
async fn a_nul_in_any_string_or_member_name_of_an_execution_is_a_400_naming_it() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    let body = json!({
        "requestId": "req-1",
        "campaignId": id,
        "context": {"resetUrl": "https://example.com/r", "brand": "Acme"},
        "recipients": [
            {"type": "external", "userId": "jane@example.com", "namespace": "email",
             "profile": {"person": {"name": {"firstName": "Jane"}}, "tags": ["a"]},
             "context": {"resetUrl": "https://example.com/r/jane"},
             "channelData": {"emailAddress": "jane.doe@example.com"}}
        ]
    });
    assert!(each_nul_is_refused(&app, Method::POST, "/im/executions/unitary", &body).await > 25);
    let accepted = app.post("/im/executions/unitary", &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "the same body without a NUL is fine: {}", accepted.body);
}

#[tokio::test]
async fn a_nul_in_a_profile_body_or_its_path_is_a_400_naming_it() {
    let app = TestApp::spawn().await;
    let profile = json!({
        "attributes": {"person": {"name": {"firstName": "Jane"}}, "tags": ["vip"]},
        "emailAddress": "jane@example.com",
        "phoneNumber": "+33612345678",
        "pushTokens": [{"token": "abc", "platform": "fcm"}]
    });
    each_nul_is_refused(&app, Method::PUT, "/profiles/email/jane", &profile).await;
    for (path, pointer) in [("/profiles/em%00ail/jane", "/namespace"), ("/profiles/email/ja%00ne", "/userId")] {
        assert_refused_at(&app.call(Method::PUT, path, Some(&app.key), Some(&profile)).await, pointer);
        assert_refused_at(&app.get(path).await, pointer);
    }
    app.get("/profiles/email/jane").await.assert_problem(StatusCode::NOT_FOUND, "profile-not-found");
}

#[tokio::test]
async fn a_nul_in_a_path_parameter_or_a_query_value_of_any_route_is_a_400_naming_it() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    let cases = [
        (Method::GET, "/campaigns/%00".to_string(), "/id"),
        (Method::PATCH, "/campaigns/x%00".to_string(), "/id"),
        (Method::POST, "/campaigns/%00/activate".to_string(), "/id"),
        (Method::GET, "/campaigns/%00/report.html".to_string(), "/id"),
        (Method::GET, "/im/executions/%00".to_string(), "/executionId"),
        (Method::POST, "/dead-letters/%00/replay".to_string(), "/id"),
        (Method::GET, "/dead-letters?reason=%00".to_string(), "/reason"),
        (Method::GET, "/dead-letters?reason=a%00b&limit=1".to_string(), "/reason"),
        (Method::GET, "/campaigns?status=%00".to_string(), "/status"),
        (Method::GET, "/reports?from=%00".to_string(), "/from"),
        (Method::GET, format!("/campaigns/{id}/report?to=%00"), "/to"),
        (Method::POST, format!("/campaigns/{id}/preview?version=%00"), "/version"),
        (Method::GET, format!("/campaigns/{id}?%00=1"), "/\u{0}"),
    ];
    for (method, path, pointer) in cases {
        let reply = app.call(method.clone(), &path, Some(&app.key), Some(&json!({}))).await;
        assert_refused_at(&reply, pointer);
    }
    // `%25` is a percent sign: `%2500` is the text "%00", not a NUL.
    let reply = app.get("/dead-letters?reason=%2500").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn a_path_parameter_that_is_not_utf8_is_a_400_problem_not_plain_text() {
    let app = TestApp::spawn().await;
    for (method, path, pointer) in [
        (Method::GET, "/campaigns/%FF", "/id"),
        (Method::GET, "/campaigns/%C3%28/curl", "/id"),
        (Method::DELETE, "/campaigns/%80", "/id"),
        (Method::GET, "/im/executions/%FE%FF", "/executionId"),
        (Method::GET, "/profiles/%FF/jane", "/namespace"),
        (Method::PUT, "/profiles/email/%ED%A0%80", "/userId"),
    ] {
        assert_refused_at(&app.call(method, path, Some(&app.key), Some(&json!({}))).await, pointer);
    }
}

#[tokio::test]
async fn dates_postgresql_cannot_store_are_400s() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("ancient");
    document["schedule"] = json!({"startDate": "-200000-01-01T00:00:00Z"});
    assert_refused_at(&app.post("/campaigns", &document).await, "/schedule/startDate");
    document["schedule"] = json!({"endDate": "+200000-01-01T00:00:00Z"});
    assert_refused_at(&app.post("/campaigns", &document).await, "/schedule/endDate");
    assert_refused_at(&app.get("/reports?from=-200000-01-01T00:00:00Z&to=-200000-01-02T00:00:00Z").await, "/from");
    assert_refused_at(&app.get("/reports?to=-262143-01-01T00:00:00Z").await, "/to");
}

/// Sends `method path` with a raw body and `content_type`; the answer must be a problem.
async fn raw(app: &TestApp, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let response = app
        .http
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(&app.key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers.get("content-type").map_or("", |v| v.to_str().unwrap()).to_string();
    let body = response.json().await.unwrap_or_else(|error| panic!("{status} without a JSON body: {error}"));
    Reply { status, body, content_type, headers }
}

#[tokio::test]
async fn every_rejection_is_problem_json_414_413_415_405_and_bad_queries_included() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    let long = "x".repeat(herald_api::edge::MAX_URI_BYTES);
    app.get(&format!("/campaigns?status={long}")).await.assert_problem(StatusCode::URI_TOO_LONG, "uri-too-long");
    app.get(&format!("/nothing/{long}")).await.assert_problem(StatusCode::URI_TOO_LONG, "uri-too-long");
    // Duplicate takes an optional body of any type; an oversize one is still a problem.
    let big = vec![b' '; app.options.max_body_bytes + 1];
    raw(&app, Method::POST, &format!("/campaigns/{id}/duplicate"), "application/json", big.clone())
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    raw(&app, Method::PUT, "/profiles/email/jane", "application/json", big)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    raw(&app, Method::PUT, "/profiles/email/jane", "text/plain", b"{}".to_vec())
        .await
        .assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");
    raw(&app, Method::POST, &format!("/campaigns/{id}/duplicate"), "application/json", b"{\"name\": 1}".to_vec())
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "validation");
    for (method, path) in [(Method::DELETE, "/campaigns"), (Method::POST, "/profiles/a/b"), (Method::PUT, "/reports")] {
        app.call(method, path, Some(&app.key), None)
            .await
            .assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    }
    for path in
        ["/campaigns?limit=x", "/campaigns?unknown=1", "/dead-letters?campaignId=nope", "/reports?from=yesterday"]
    {
        app.get(path).await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    }
}

#[tokio::test]
async fn api_answers_are_no_store_and_nosniff_and_the_report_page_keeps_its_policy() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    let mut replies = vec![
        app.get("/campaigns").await,
        app.get(&format!("/campaigns/{id}")).await,
        app.get("/nope").await,
        app.get("/campaigns/%FF").await,
        app.call(Method::GET, "/campaigns", None, None).await,
        app.call(Method::GET, "/healthz", None, None).await,
        app.call(Method::PUT, "/profiles/email/jane", Some(&app.key), Some(&json!({"attributes": {}}))).await,
    ];
    replies.push(app.delete(&format!("/campaigns/{id}")).await);
    for reply in &replies {
        assert_eq!(reply.headers["cache-control"], "no-store", "{} {}", reply.status, reply.body);
        assert_eq!(reply.headers["x-content-type-options"], "nosniff", "{} {}", reply.status, reply.body);
    }
    let id = app.create_campaign(&password_reset_email("page")).await;
    let page = app.http.get(format!("{}/campaigns/{id}/report.html", app.address)).bearer_auth(&app.key).send().await;
    let page = page.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        page.headers()["content-security-policy"],
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    );
}

#[tokio::test]
async fn a_cursor_naming_another_sandboxs_campaign_reveals_nothing() {
    let app = TestApp::spawn().await;
    let theirs = app.create_campaign(&otp_sms("theirs")).await;
    app.clock.advance(chrono::Duration::seconds(10));
    let key_b = app.key_for("b", &[herald_core::Scope::CampaignsRead, herald_core::Scope::CampaignsWrite]).await;
    let created = app.call(Method::POST, "/campaigns", Some(&key_b), Some(&otp_sms("mine"))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let list = |after: String| {
        let key_b = key_b.clone();
        let app = &app;
        async move { app.call(Method::GET, &format!("/campaigns?after={after}"), Some(&key_b), None).await }
    };
    let foreign = list(theirs).await;
    let unknown = list(uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(foreign.status, StatusCode::OK);
    assert_eq!(foreign.body, unknown.body, "another sandbox's id reads like an id that does not exist");
    assert_eq!(foreign.body["items"], json!([]));
}
