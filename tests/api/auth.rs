use herald_core::Scope;
use herald_tests::TestApp;
use herald_tests::fixtures::password_reset_email;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_request_without_a_key_gets_401() {
    let app = TestApp::spawn().await;
    let reply = app.call(Method::GET, "/campaigns", None, None).await;
    reply.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn an_unknown_key_gets_401() {
    let app = TestApp::spawn().await;
    let reply = app.call(Method::GET, "/campaigns", Some("hk_not-a-real-key"), None).await;
    reply.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn a_key_of_another_sandbox_sees_nothing_of_this_one() {
    let app = TestApp::spawn().await;
    let id = app.live_campaign(&password_reset_email("reset")).await;
    app.call(Method::PUT, "/profiles/email/jane", Some(&app.key), Some(&json!({"emailAddress": "jane@example.com"})))
        .await;
    let other = app.key_for("b", &Scope::ALL).await;

    for (method, path) in [
        (Method::GET, format!("/campaigns/{id}")),
        (Method::PATCH, format!("/campaigns/{id}")),
        (Method::DELETE, format!("/campaigns/{id}")),
        (Method::POST, format!("/campaigns/{id}/stop")),
        (Method::POST, format!("/campaigns/{id}/duplicate")),
        (Method::GET, format!("/campaigns/{id}/curl")),
        (Method::POST, format!("/campaigns/{id}/preview")),
    ] {
        let body = (method != Method::GET && method != Method::DELETE).then(|| json!({}));
        let reply = app.call(method.clone(), &path, Some(&other), body.as_ref()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}: {}", reply.body);
        reply.assert_problem(StatusCode::NOT_FOUND, "campaign-not-found");
    }
    let listed = app.call(Method::GET, "/campaigns", Some(&other), None).await;
    assert_eq!(listed.body["items"], json!([]));
    app.call(Method::GET, "/profiles/email/jane", Some(&other), None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "profile-not-found");
    // Sandbox A still sees its campaign, untouched.
    assert_eq!(app.get(&format!("/campaigns/{id}")).await.body["status"], "live");
}

#[tokio::test]
async fn an_execution_only_key_cannot_manage_campaigns() {
    let app = TestApp::spawn().await;
    let execute_only = app.key_for("a", &[Scope::ExecutionsWrite]).await;
    let reply = app.call(Method::POST, "/campaigns", Some(&execute_only), Some(&password_reset_email("x"))).await;
    reply.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(reply.body["requiredScope"], "campaigns:write");
    app.call(Method::GET, "/campaigns", Some(&execute_only), None)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn a_read_only_key_can_read_but_not_change() {
    let app = TestApp::spawn().await;
    let id = app.create_campaign(&password_reset_email("reset")).await;
    let reader = app.key_for("a", &[Scope::CampaignsRead]).await;
    assert_eq!(app.call(Method::GET, &format!("/campaigns/{id}"), Some(&reader), None).await.status, StatusCode::OK);
    app.call(Method::POST, &format!("/campaigns/{id}/activate"), Some(&reader), None)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
}
