use herald_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_profile_is_created_then_replaced_and_read_back() {
    let app = TestApp::spawn().await;
    let first = json!({
        "attributes": {"person": {"name": {"firstName": "Jane"}}},
        "emailAddress": "jane@example.com",
        "phoneNumber": "+33612345678",
        "pushTokens": [{"token": "abc", "platform": "fcm"}]
    });
    let created = app.call(Method::PUT, "/profiles/email/jane@example.com", Some(&app.key), Some(&first)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);

    let replaced = app
        .call(
            Method::PUT,
            "/profiles/email/jane@example.com",
            Some(&app.key),
            Some(&json!({"attributes": {"tier": "gold"}})),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK);

    let read = app.get("/profiles/email/jane@example.com").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["attributes"], json!({"tier": "gold"}));
    assert_eq!(read.body["emailAddress"], json!(null), "PUT replaces the whole profile");
    assert_eq!(read.body["userId"], "jane@example.com");
    assert_eq!(read.body["createdAt"], created.body["createdAt"]);
}

#[tokio::test]
async fn profiles_are_keyed_by_namespace() {
    let app = TestApp::spawn().await;
    app.call(Method::PUT, "/profiles/email/u1", Some(&app.key), Some(&json!({"attributes": {"a": 1}}))).await;
    app.get("/profiles/crm/u1").await.assert_problem(StatusCode::NOT_FOUND, "profile-not-found");
}

#[tokio::test]
async fn bad_addresses_are_refused_without_echoing_them() {
    let app = TestApp::spawn().await;
    let reply = app
        .call(
            Method::PUT,
            "/profiles/email/u1",
            Some(&app.key),
            Some(&json!({"emailAddress": "jane.doe.example.com", "phoneNumber": "0612345678"})),
        )
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
    let pointers: Vec<&str> =
        reply.body["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, ["/emailAddress", "/phoneNumber"]);
    assert!(!reply.body.to_string().contains("0612345678"));
    let reply = app.call(Method::PUT, "/profiles/email/u1", Some(&app.key), Some(&json!({"attributes": []}))).await;
    reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
}
