//! `/api-keys` and the key cache: hostile callers first (revoked keys, other sandboxes' ids,
//! forged scopes, garbage ids), then revocation across API processes, then the happy path.

use std::time::{Duration, Instant};

use herald_core::Scope;
use herald_tests::{Reply, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Creates a key through the API with `admin`; returns (key, id).
async fn create(app: &TestApp, admin: &str, body: &Value) -> (String, String) {
    let reply = app.call(Method::POST, "/api-keys", Some(admin), Some(body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    (reply.body["key"].as_str().unwrap().to_string(), reply.body["id"].as_str().unwrap().to_string())
}

async fn status_with(app: &TestApp, key: &str) -> StatusCode {
    app.call(Method::GET, "/campaigns", Some(key), None).await.status
}

/// The id of `key`, as the key itself lists it (`current`).
async fn own_id(app: &TestApp, key: &str) -> String {
    let listed = app.call(Method::GET, "/api-keys", Some(key), None).await;
    let items = listed.body["items"].as_array().unwrap_or_else(|| panic!("{}", listed.body)).clone();
    let own = items.iter().find(|item| item["current"] == true).expect("the caller's own key is listed");
    own["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_everywhere_it_is_presented() {
    let app = TestApp::spawn().await;
    let (key, id) = create(&app, &app.key, &json!({"scopes": ["all"], "name": "leaked"})).await;
    assert_eq!(status_with(&app, &key).await, StatusCode::OK, "cached now");

    let revoked = app.delete(&format!("/api-keys/{id}")).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert!(revoked.body["revokedAt"].is_string());
    for (method, path) in [
        (Method::GET, "/campaigns".to_string()),
        (Method::GET, "/api-keys".to_string()),
        (Method::POST, format!("/api-keys/{id}/rotate")),
        (Method::DELETE, format!("/api-keys/{id}")),
    ] {
        let reply = app.call(method.clone(), &path, Some(&key), None).await;
        reply.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    // Revoking again changes nothing; rotating a revoked key is refused, it does not revive it.
    let again = app.delete(&format!("/api-keys/{id}")).await;
    assert_eq!((again.status, &again.body["revokedAt"]), (StatusCode::OK, &revoked.body["revokedAt"]));
    app.post(&format!("/api-keys/{id}/rotate"), &Value::Null)
        .await
        .assert_problem(StatusCode::CONFLICT, "api-key-revoked");
    assert_eq!(status_with(&app, &key).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_sandboxs_keys_are_invisible_and_untouchable() {
    let app = TestApp::spawn().await;
    let other = app.key_for("b", &Scope::ALL).await;
    let other_id = own_id(&app, &other).await;

    let listed = app.get("/api-keys?includeRevoked=true").await;
    assert!(!listed.body.to_string().contains(&other_id), "{}", listed.body);
    for (method, path) in
        [(Method::DELETE, format!("/api-keys/{other_id}")), (Method::POST, format!("/api-keys/{other_id}/rotate"))]
    {
        app.call(method, &path, Some(&app.key), None).await.assert_problem(StatusCode::NOT_FOUND, "api-key-not-found");
    }
    // The sandbox comes from the key, never the body.
    let forged = app.post("/api-keys", &json!({"scopes": ["campaigns:read"], "sandbox": "b"})).await;
    forged.assert_problem(StatusCode::BAD_REQUEST, "validation");
    assert_eq!(status_with(&app, &other).await, StatusCode::OK, "b's key still works");
    assert_eq!(own_id(&app, &other).await, other_id);
}

#[tokio::test]
async fn garbage_key_ids_name_no_key() {
    let app = TestApp::spawn().await;
    let long = "f".repeat(2000);
    for id in ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "%00", "a%00b", "%FF%FE", "%20", long.as_str()] {
        for (method, path) in
            [(Method::DELETE, format!("/api-keys/{id}")), (Method::POST, format!("/api-keys/{id}/rotate"))]
        {
            let reply = app.call(method.clone(), &path, Some(&app.key), None).await;
            // 404 from the handler, or 400 where the edge refuses a NUL or bad UTF-8 first.
            assert!(
                [StatusCode::NOT_FOUND, StatusCode::BAD_REQUEST].contains(&reply.status),
                "{method} {path}: {} {}",
                reply.status,
                reply.body
            );
            assert_eq!(reply.content_type, "application/problem+json", "{method} {path}");
        }
    }
    assert_eq!(status_with(&app, &app.key).await, StatusCode::OK);
}

#[tokio::test]
async fn a_key_cannot_grant_rotate_or_revoke_scopes_it_does_not_hold() {
    let app = TestApp::spawn().await;
    let admin_id = own_id(&app, &app.key).await;
    let (limited, _) = create(&app, &app.key, &json!({"scopes": ["keys:admin", "campaigns:read"]})).await;

    for scopes in [json!(["campaigns:write"]), json!(["all"]), json!(["campaigns:read", "executions:write"])] {
        let reply = app.call(Method::POST, "/api-keys", Some(&limited), Some(&json!({ "scopes": scopes }))).await;
        reply.assert_problem(StatusCode::FORBIDDEN, "forbidden");
        assert!(reply.body["missingScopes"].as_array().is_some_and(|missing| !missing.is_empty()), "{}", reply.body);
    }
    for (method, path) in
        [(Method::POST, format!("/api-keys/{admin_id}/rotate")), (Method::DELETE, format!("/api-keys/{admin_id}"))]
    {
        let reply = app.call(method, &path, Some(&limited), None).await;
        reply.assert_problem(StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(reply.body["requiredScope"], "campaigns:write", "{}", reply.body);
    }
    assert_eq!(status_with(&app, &app.key).await, StatusCode::OK, "the stronger key is untouched");
    // What it holds, it may hand out.
    let (weaker, _) = create(&app, &limited, &json!({"scopes": ["campaigns:read"]})).await;
    assert_eq!(status_with(&app, &weaker).await, StatusCode::OK);
    app.call(Method::GET, "/api-keys", Some(&weaker), None).await.assert_problem(StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn forged_and_malformed_key_requests_are_400s_naming_the_field() {
    let app = TestApp::spawn().await;
    for (body, pointer) in [
        (json!({"scopes": ["keys:root"]}), "/scopes/0"),
        (json!({"scopes": ["campaigns:read", "campaigns:read\u{0}"]}), "/scopes/1"),
        (json!({"scopes": []}), "/scopes"),
        (json!({"scopes": "all"}), "/scopes"),
        (json!({"name": "x"}), ""),
        (json!({"scopes": ["all"], "name": "bad\u{0}name"}), "/name"),
        (json!({"scopes": ["all"], "name": " "}), "/name"),
        (json!({"scopes": ["all"], "name": "n".repeat(101)}), "/name"),
    ] {
        let reply = app.post("/api-keys", &body).await;
        reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
        let pointers: Vec<&str> =
            reply.body["errors"].as_array().unwrap().iter().filter_map(|error| error["pointer"].as_str()).collect();
        assert!(pointers.iter().any(|p| p.starts_with(pointer)), "{body}: {}", reply.body);
    }
    let listed = app.get("/api-keys").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1, "nothing was created: {}", listed.body);
    app.get("/api-keys?limit=0").await.assert_problem(StatusCode::BAD_REQUEST, "validation");
    app.get("/api-keys?after=nope").await.assert_problem(StatusCode::BAD_REQUEST, "validation");
}

/// An API process of its own on `app`'s database, whose state the test can ask about.
async fn process(app: &TestApp) -> (String, herald_api::AppState, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let config = herald_api::ApiConfig { public_url: address.clone(), ..Default::default() };
    let state = herald_api::AppState::new(app.database.store(), app.clock.clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(herald_api::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    while !state.api_keys_listening() {
        assert!(started.elapsed() < Duration::from_secs(5), "the key change listener did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (address, state, stop)
}

async fn get_on(address: &str, key: &str) -> StatusCode {
    reqwest::Client::new().get(format!("{address}/campaigns")).bearer_auth(key).send().await.unwrap().status()
}

/// Revokes `id` the way a bug or a manual fix in the database would: without a notification.
async fn revoke_silently(app: &TestApp, id: &str) {
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let id = uuid::Uuid::parse_str(id).unwrap();
    client.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", &[&id]).await.unwrap();
}

#[tokio::test]
async fn a_key_revoked_through_one_api_process_gets_401_on_another_within_a_second() {
    let app = TestApp::spawn().await;
    let (other, _other_state, _stop) = process(&app).await;
    let (key, id) = create(&app, &app.key, &json!({"scopes": ["campaigns:read"]})).await;
    let (silent, silent_id) = create(&app, &app.key, &json!({"scopes": ["campaigns:read"]})).await;
    assert_eq!(get_on(&other, &key).await, StatusCode::OK);
    assert_eq!(get_on(&other, &silent).await, StatusCode::OK);

    // The other process serves keys from its cache: a change nobody announced is not seen.
    revoke_silently(&app, &silent_id).await;
    assert_eq!(get_on(&other, &silent).await, StatusCode::OK, "the cache is in use (else this test proves nothing)");

    let revoked_at = Instant::now();
    assert_eq!(app.delete(&format!("/api-keys/{id}")).await.status, StatusCode::OK);
    while get_on(&other, &key).await != StatusCode::UNAUTHORIZED {
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "still accepted 1 s after revocation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("revocation seen by the other process after {:?}", revoked_at.elapsed());
}

#[tokio::test]
async fn while_the_listener_is_down_keys_are_checked_in_the_database() {
    let app = TestApp::spawn().await;
    let (other, state, _stop) = process(&app).await;
    let (key, id) = create(&app, &app.key, &json!({"scopes": ["campaigns:read"]})).await;
    assert_eq!(get_on(&other, &key).await, StatusCode::OK, "cached");

    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let killed = client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query = 'LISTEN herald_api_key_changes'",
            &[],
        )
        .await
        .unwrap();
    assert!(killed >= 1, "no listener connection found");
    let started = Instant::now();
    while state.api_keys_listening() {
        assert!(started.elapsed() < Duration::from_secs(2), "the lost listener was not noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Missed by every listener: only reading the database (or starting over) can see it.
    revoke_silently(&app, &id).await;
    assert_eq!(get_on(&other, &key).await, StatusCode::UNAUTHORIZED);
    while !state.api_keys_listening() {
        assert!(started.elapsed() < Duration::from_secs(10), "the listener did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get_on(&other, &key).await, StatusCode::UNAUTHORIZED);
    assert_eq!(get_on(&other, &app.key).await, StatusCode::OK);
}

#[tokio::test]
async fn the_key_cache_and_its_listener_stop_with_the_api() {
    let app = TestApp::spawn().await;
    let (_, state, stop) = process(&app).await;
    let listeners = || async {
        let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query = 'LISTEN herald_api_key_changes'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let before = listeners().await;
    assert!(before >= 1);
    drop(stop);
    drop(state);
    let started = Instant::now();
    while listeners().await >= before {
        assert!(started.elapsed() < Duration::from_secs(5), "the listener outlived its api");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn item<'a>(listed: &'a Reply, id: &str) -> &'a Value {
    listed.body["items"].as_array().unwrap().iter().find(|item| item["id"] == id).expect("listed")
}

#[tokio::test]
async fn keys_are_created_listed_with_prefix_and_last_use_and_rotated() {
    let app = TestApp::spawn().await;
    let created =
        app.post("/api-keys", &json!({"scopes": ["campaigns:read", "executions:write"], "name": "shop"})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.headers["cache-control"], "no-store");
    let key = created.body["key"].as_str().unwrap().to_string();
    let id = created.body["id"].as_str().unwrap().to_string();
    assert_eq!(created.body["prefix"], key[..11]);
    assert_eq!(created.body["scopes"], json!(["campaigns:read", "executions:write"]));
    assert_eq!(created.body["lastUsedAt"], Value::Null);

    assert_eq!(status_with(&app, &key).await, StatusCode::OK);
    let listed = app.get("/api-keys").await;
    assert!(!listed.body.to_string().contains(&key), "a list never shows a secret");
    let shown = item(&listed, &id);
    assert_eq!((shown["name"].as_str(), shown["prefix"].as_str()), (Some("shop"), Some(&key[..11])));
    assert!(shown["lastUsedAt"].is_string(), "{shown}");
    assert_eq!((shown["current"].as_bool(), shown["bootstrap"].as_bool()), (Some(false), Some(false)));

    let rotated = app.post(&format!("/api-keys/{id}/rotate"), &Value::Null).await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    assert_eq!(rotated.headers["cache-control"], "no-store");
    let new_key = rotated.body["key"].as_str().unwrap().to_string();
    let new_id = rotated.body["id"].as_str().unwrap().to_string();
    assert_eq!((rotated.body["replaces"].as_str(), rotated.body["name"].as_str()), (Some(id.as_str()), Some("shop")));
    assert_eq!(rotated.body["scopes"], created.body["scopes"]);
    assert_ne!(new_key, key);
    assert_eq!(status_with(&app, &key).await, StatusCode::UNAUTHORIZED, "the old key stops working");
    assert_eq!(status_with(&app, &new_key).await, StatusCode::OK);

    let active = app.get("/api-keys").await;
    assert!(!active.body.to_string().contains(&id), "revoked keys are hidden by default");
    let all = app.get("/api-keys?includeRevoked=true").await;
    let old = item(&all, &id);
    assert!(old["revokedAt"].is_string());
    assert_eq!(old["replacedBy"], new_id.as_str());
    let page = app.get("/api-keys?includeRevoked=true&limit=1").await;
    let next = page.body["next"].as_str().expect("a next page").to_string();
    let rest = app.get(&format!("/api-keys?includeRevoked=true&after={next}")).await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 2, "{}", rest.body);
}

#[tokio::test]
async fn last_use_is_written_at_most_about_once_a_minute_per_key() {
    let app = TestApp::spawn().await;
    let (key, id) = create(&app, &app.key, &json!({"scopes": ["campaigns:read"]})).await;
    let id = uuid::Uuid::parse_str(&id).unwrap();
    let last_used = || async {
        let keys = app.store.list_api_keys(Some("a"), true, None, 100).await.unwrap();
        keys.into_iter().find(|k| k.id == id).unwrap().last_used_at
    };
    assert_eq!(status_with(&app, &key).await, StatusCode::OK);
    let first = last_used().await.expect("written on first use");

    // Fresh processes miss their caches; within the minute the database is not written again.
    app.clock.advance(chrono::Duration::seconds(30));
    let peer = app.spawn_peer().await;
    for _ in 0..5 {
        assert_eq!(status_with(&peer, &key).await, StatusCode::OK);
    }
    assert_eq!(last_used().await, Some(first));
    app.clock.advance(chrono::Duration::seconds(31));
    let later = app.spawn_peer().await;
    assert_eq!(status_with(&later, &key).await, StatusCode::OK);
    assert_eq!(last_used().await, Some(first + chrono::Duration::seconds(61)));
}
