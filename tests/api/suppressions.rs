//! The suppression list API: per sandbox, normalised addresses, paging, scopes, hostile input.

use herald_core::Scope;
use herald_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn hostile_and_malformed_input_is_a_problem_never_a_500() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/suppressions/push/token", "validation"),
        ("/suppressions/fax/jane@example.com", "validation"),
        ("/suppressions/email/not-an-address", "validation"),
        ("/suppressions/sms/0612345678", "validation"),
        ("/suppressions/email/jane%00@example.com", "validation"),
        ("/suppressions?cursor=%%%", "validation"),
        ("/suppressions?cursor=bm90LWEtY3Vyc29y", "validation"),
        ("/suppressions?limit=0", "validation"),
        // A cursor that decodes to a NUL, or to a channel without a list.
        ("/suppressions?cursor=ZW1haWwKAA", "validation"),
        ("/suppressions?cursor=cHVzaAp4", "validation"),
        ("/suppressions?limit=100000", "validation"),
        ("/suppressions?channel=push", "validation"),
        ("/suppressions?unknown=1", "validation"),
    ] {
        let reply = app.get(path).await;
        assert!(reply.status.is_client_error(), "{path}: {} {}", reply.status, reply.body);
        assert!(reply.body["type"].as_str().unwrap_or_default().ends_with(kind), "{path}: {}", reply.body);
    }
    let put = |body: serde_json::Value| {
        let app = &app;
        async move { app.call(Method::PUT, "/suppressions/email/jane@example.com", Some(&app.key), Some(&body)).await }
    };
    put(json!({"reason": "because"})).await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    put(json!({"detail": "x".repeat(501)})).await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    put(json!({"sandbox": "b"})).await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    put(json!({"detail": "nul \u{0} inside"})).await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    app.delete("/suppressions/email/jane@example.com")
        .await
        .assert_problem(StatusCode::NOT_FOUND, "suppression-not-found");
}

#[tokio::test]
async fn entries_are_normalised_per_sandbox_paged_and_scoped() {
    let app = TestApp::spawn().await;
    let put = app
        .call(Method::PUT, "/suppressions/email/Jane@Example.COM", Some(&app.key), Some(&json!({"detail": "asked"})))
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(
        (&put.body["address"], &put.body["reason"], &put.body["source"]),
        (&json!("jane@example.com"), &json!("manual"), &json!("api"))
    );
    // Any spelling of the address finds it.
    assert_eq!(app.get("/suppressions/email/JANE@example.com").await.body["detail"], "asked");
    // Another sandbox sees nothing of it, and its own entries stay its own.
    let other = app.key_for("b", &Scope::ALL).await;
    let seen = app.call(Method::GET, "/suppressions/email/jane@example.com", Some(&other), None).await;
    seen.assert_problem(StatusCode::NOT_FOUND, "suppression-not-found");
    let listed = app.call(Method::GET, "/suppressions", Some(&other), None).await;
    assert_eq!(listed.body["items"], json!([]));
    let removed = app.call(Method::DELETE, "/suppressions/email/jane@example.com", Some(&other), None).await;
    removed.assert_problem(StatusCode::NOT_FOUND, "suppression-not-found");
    assert_eq!(app.get("/suppressions/email/jane@example.com").await.status, StatusCode::OK);

    // 25 entries, read 10 at a time through the cursor: each once, in order.
    for n in 0..24 {
        let path = format!("/suppressions/sms/+336{n:08}");
        assert_eq!(app.call(Method::PUT, &path, Some(&app.key), Some(&json!({}))).await.status, StatusCode::OK);
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(cursor) => format!("/suppressions?limit=10&cursor={cursor}"),
            None => "/suppressions?limit=10".into(),
        };
        let page = app.get(&path).await.body;
        for item in page["items"].as_array().unwrap() {
            seen.push(format!("{}/{}", item["channel"].as_str().unwrap(), item["address"].as_str().unwrap()));
        }
        match page["next"].as_str() {
            Some(cursor) => next = Some(cursor.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen);
    assert_eq!(app.get("/suppressions?channel=sms").await.body["items"].as_array().unwrap().len(), 24);

    // Reading needs profiles:read, changing needs profiles:write.
    let reader = app.key_for("a", &[Scope::ProfilesRead]).await;
    assert_eq!(app.call(Method::GET, "/suppressions", Some(&reader), None).await.status, StatusCode::OK);
    let refused = app.call(Method::PUT, "/suppressions/email/x@example.com", Some(&reader), Some(&json!({}))).await;
    refused.assert_problem(StatusCode::FORBIDDEN, "forbidden");
    let nobody = app.key_for("a", &[Scope::CampaignsRead]).await;
    app.call(Method::GET, "/suppressions", Some(&nobody), None)
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");
    app.call(Method::GET, "/suppressions", None, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");

    // An operator may weaken an entry (a hard bounce they know was wrong); DELETE takes it off.
    let weaker = app
        .call(
            Method::PUT,
            "/suppressions/email/jane@example.com",
            Some(&app.key),
            Some(&json!({"reason": "complaint"})),
        )
        .await;
    assert_eq!(weaker.body["reason"], "complaint");
    assert_eq!(app.delete("/suppressions/email/jane@example.com").await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/suppressions/email/jane@example.com").await.status, StatusCode::NOT_FOUND);
}
