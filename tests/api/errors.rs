//! Bad input gets a problem+json answer with a stable type, never a 500.

use herald_tests::TestApp;
use herald_tests::fixtures::password_reset_email;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value, String) {
    let response = app
        .http
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(&app.key)
        .header("content-type", content_type)
        .header("x-request-id", "test-request-42")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(response.headers()["x-request-id"], "test-request-42");
    (status, response.json().await.unwrap(), content_type)
}

#[tokio::test]
async fn malformed_json_is_a_400_problem_carrying_the_request_id() {
    let app = TestApp::spawn().await;
    let (status, body, content_type) =
        raw(&app, reqwest::Method::POST, "/campaigns", "application/json", b"{\"name\": ".to_vec()).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::BAD_REQUEST, "application/problem+json"));
    assert_eq!(body["type"], "https://herald.dev/errors/validation");
    assert_eq!(body["title"], "Malformed JSON");
    assert_eq!(body["requestId"], "test-request-42");
    assert_eq!(body["report"]["additionalContext"]["requestId"], "test-request-42");
}

#[tokio::test]
async fn trailing_garbage_after_the_json_is_refused() {
    let app = TestApp::spawn().await;
    let mut bytes = serde_json::to_vec(&password_reset_email("x")).unwrap();
    bytes.extend_from_slice(b" {}");
    let (status, body, _) = raw(&app, reqwest::Method::POST, "/campaigns", "application/json", bytes).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn unknown_fields_are_refused_with_their_location() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("x");
    document["content"]["subjet"] = json!("typo");
    let reply = app.post("/campaigns", &document).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    assert_eq!(reply.body["errors"][0]["pointer"], "/content/subjet");
    assert!(reply.body["errors"][0]["detail"].as_str().unwrap().contains("subjet"));
}

#[tokio::test]
async fn wrong_types_are_refused_with_their_location() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("x");
    document["throttleRatePerSec"] = json!("fast");
    let reply = app.post("/campaigns", &document).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    assert_eq!(reply.body["errors"][0]["pointer"], "/throttleRatePerSec");
    let reply = app.post("/campaigns", &json!({"name": "x", "channel": "fax"})).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    assert_eq!(reply.body["errors"][0]["pointer"], "/channel");
    let reply = app.post("/campaigns", &json!([1, 2])).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
}

#[tokio::test]
async fn out_of_range_values_and_empty_names_are_refused() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email(" ");
    document["throttleRatePerSec"] = json!(5000);
    let reply = app.post("/campaigns", &document).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    let pointers: Vec<&str> =
        reply.body["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, ["/name", "/throttleRatePerSec"]);
}

#[tokio::test]
async fn an_oversize_body_is_a_413_problem() {
    let app = TestApp::spawn().await;
    let mut document = password_reset_email("big");
    document["description"] = json!("x".repeat(100 * 1024));
    let reply = app.post("/campaigns", &document).await;
    reply.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
}

#[tokio::test]
async fn a_non_json_content_type_is_a_415_problem() {
    let app = TestApp::spawn().await;
    let (status, body, _) = raw(&app, reqwest::Method::POST, "/campaigns", "text/plain", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["type"], "https://herald.dev/errors/unsupported-media-type");
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_are_problems_too() {
    let app = TestApp::spawn().await;
    app.get("/nope").await.assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.get("/campaigns/not-a-uuid").await.assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");
    app.get(&format!("/campaigns/{}", uuid::Uuid::new_v4()))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");
    app.call(reqwest::Method::PUT, "/campaigns", Some(&app.key), Some(&json!({})))
        .await
        .assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    app.get("/campaigns?limit=0").await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    app.get("/campaigns?after=garbage").await.assert_problem(StatusCode::BAD_REQUEST, "validation");
}

#[tokio::test]
async fn a_patch_that_breaks_the_document_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("x")).await;
    let reply = app.patch(&format!("/campaigns/{id}"), &json!({"surface": {"fromAdress": "typo@example.com"}})).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    app.patch(&format!("/campaigns/{id}"), &json!("not an object"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "validation");
    let current = app.get(&format!("/campaigns/{id}")).await;
    assert_eq!(current.body["draftVersion"]["definition"]["surface"]["fromAddress"], "no-reply@example.com");
}

#[tokio::test]
async fn health_endpoints_answer() {
    let app = TestApp::spawn().await;
    let reply = app.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!((reply.status, reply.body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let reply = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!((reply.status, reply.body["database"].as_str()), (StatusCode::OK, Some("ok")));
}

/// A store whose database is not there: nothing listens on the port.
fn store_without_database() -> herald_store::Store {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    herald_store::Store::connect(&format!("postgres://postgres@127.0.0.1:{port}/herald"), 2).unwrap()
}

#[tokio::test]
async fn with_the_database_gone_requests_get_503_with_retry_after_not_500() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let clock = std::sync::Arc::new(herald_core::SystemClock);
    let state = herald_api::AppState::new(store_without_database(), clock, herald_api::ApiConfig::default());
    tokio::spawn(herald_api::serve(listener, state, std::future::pending()));
    let http = reqwest::Client::new();
    for (method, path) in [
        (reqwest::Method::GET, "/campaigns"),
        (reqwest::Method::POST, "/im/executions/unitary"),
        (reqwest::Method::GET, "/readyz"),
    ] {
        let mut request = http.request(method.clone(), format!("{address}{path}")).bearer_auth("hk_any");
        if method == reqwest::Method::POST {
            request = request.json(&json!({"requestId": "r", "campaignId": uuid::Uuid::new_v4(), "recipients": []}));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
        assert_eq!(response.headers()["retry-after"], "1", "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "https://herald.dev/errors/unavailable", "{method} {path}: {body}");
    }
}
