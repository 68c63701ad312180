//! Audiences: the filter language against hostile input, list uploads (streamed, all or
//! nothing), and the sandbox boundary.

use herald_core::Scope;
use herald_tests::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub(crate) async fn sql(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// `count` profiles in `sandbox`, namespace `crm`, user ids `u1…`, each with a phone number,
/// `tier` gold for even numbers, `age` = i % 90. In one statement, as a bulk load would.
pub(crate) async fn seed_profiles(client: &tokio_postgres::Client, sandbox: &str, count: i64) {
    client
        .execute(
            "INSERT INTO profiles (sandbox, namespace, user_id, attributes, phone_number, created_at, updated_at) \
             SELECT $1, 'crm', 'u' || i, \
                    jsonb_build_object('tier', CASE WHEN i % 2 = 0 THEN 'gold' ELSE 'basic' END, 'age', i % 90), \
                    '+336' || lpad(i::text, 8, '0'), now(), now() \
               FROM generate_series(1, $2::bigint) i",
            &[&sandbox, &count],
        )
        .await
        .unwrap();
}

/// Uploads `body` as the members of `audience` and returns (status, JSON body).
pub(crate) async fn upload(
    app: &TestApp,
    key: &str,
    audience: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = app
        .http
        .put(format!("{}/audiences/{audience}/members?namespace=phone", app.address))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

pub(crate) async fn create_list(app: &TestApp, name: &str) -> String {
    let reply = app.post("/audiences", &json!({"name": name})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_filter_that_would_reach_sql_unparameterised_is_refused() {
    let app = TestApp::spawn().await;
    let client = sql(&app).await;
    seed_profiles(&client, "a", 20).await;
    for (filter, pointer) in [
        (json!({"field": "namespace; DROP TABLE profiles", "op": "eq", "value": "x"}), "/filter/field"),
        (json!({"field": "attributes.a'--", "op": "eq", "value": "x"}), "/filter/field"),
        (json!({"field": "attributes.tier", "op": "eq OR 1=1", "value": "x"}), "/filter/op"),
        (json!({"field": "attributes.tier", "op": "eq", "value": "x", "sql": "1=1"}), "/filter"),
        (json!({"and": [{"field": "userId", "op": "eq", "value": "a\u{0}b"}]}), "/filter/and/0/value"),
        (json!({"or": []}), "/filter/or"),
    ] {
        let reply = app.post("/audiences", &json!({"name": "hostile", "filter": filter})).await;
        reply.assert_problem(StatusCode::BAD_REQUEST, "validation");
        let pointers: Vec<&str> =
            reply.body["errors"].as_array().unwrap().iter().filter_map(|e| e["pointer"].as_str()).collect();
        assert!(pointers.iter().any(|p| p.starts_with(pointer)), "{filter}: {}", reply.body);
    }
    // Hostile values are only ever parameters: they match nothing and break nothing.
    for (name, value) in
        [("quote", "x' OR '1'='1"), ("drop", "'); DROP TABLE profiles; --"), ("placeholder", "$1"), ("slash", "\\")]
    {
        let filter = json!({"or": [
            {"field": "userId", "op": "eq", "value": value},
            {"field": "attributes.tier", "op": "in", "value": [value, "nobody"]},
            {"field": "attributes.tier", "op": "gt", "value": value},
        ]});
        let reply = app.post("/audiences", &json!({"name": name, "filter": filter})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        // "x' OR …" sorts after "gold" and "basic", "$1" and "'" before them: gt matches only
        // what it should, as text.
        let expected = client
            .query_one("SELECT count(*) FROM profiles WHERE attributes->>'tier' > $1 COLLATE \"C\"", &[&value])
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(reply.body["size"], expected, "{name}: {}", reply.body);
    }
    let left: i64 = client.query_one("SELECT count(*) FROM profiles", &[]).await.unwrap().get(0);
    assert_eq!(left, 20, "the profiles table is intact");
}

#[tokio::test]
async fn a_filter_audience_counts_the_sandbox_s_matching_profiles_only() {
    let app = TestApp::spawn().await;
    let client = sql(&app).await;
    seed_profiles(&client, "a", 100).await;
    seed_profiles(&client, "b", 40).await;
    let filter = json!({"and": [
        {"field": "attributes.tier", "op": "eq", "value": "gold"},
        {"not": {"field": "attributes.age", "op": "lt", "value": 10}},
        {"field": "phone", "op": "exists"},
    ]});
    let reply = app.post("/audiences", &json!({"name": "gold", "filter": filter})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let expected: i64 = client
        .query_one(
            "SELECT count(*) FROM profiles WHERE sandbox = 'a' AND attributes->>'tier' = 'gold' \
               AND NOT ((attributes->>'age')::int < 10)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reply.body["size"], expected);
    assert_eq!(reply.body["type"], "filter");
    assert!(reply.body["computedAt"].is_string());
    let id = reply.body["id"].as_str().unwrap().to_string();
    assert_eq!(app.get(&format!("/audiences/{id}")).await.body["size"], expected);
    assert_eq!(app.get("/audiences").await.body["items"].as_array().unwrap().len(), 1);
    app.post("/audiences", &json!({"name": "gold", "filter": filter}))
        .await
        .assert_problem(StatusCode::CONFLICT, "audience-name-taken");

    // Another sandbox sees nothing of it, and cannot delete it.
    let stranger = app.key_for("b", &Scope::ALL).await;
    app.call(Method::GET, &format!("/audiences/{id}"), Some(&stranger), None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "audience-not-found");
    app.call(Method::DELETE, &format!("/audiences/{id}"), Some(&stranger), None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "audience-not-found");
    let listed = app.call(Method::GET, "/audiences", Some(&stranger), None).await;
    assert_eq!(listed.body["items"], json!([]));
    // A read-only key reads but does not create.
    let reader = app.key_for("a", &[Scope::ProfilesRead]).await;
    assert_eq!(app.call(Method::GET, &format!("/audiences/{id}"), Some(&reader), None).await.status, StatusCode::OK);
    app.call(Method::POST, "/audiences", Some(&reader), Some(&json!({"name": "x"})))
        .await
        .assert_problem(StatusCode::FORBIDDEN, "forbidden");

    assert_eq!(app.delete(&format!("/audiences/{id}")).await.status, StatusCode::NO_CONTENT);
    app.get(&format!("/audiences/{id}")).await.assert_problem(StatusCode::NOT_FOUND, "audience-not-found");
    let members: i64 = client.query_one("SELECT count(*) FROM audience_members", &[]).await.unwrap().get(0);
    assert_eq!(members, 0, "its members went with it");
}

#[tokio::test]
async fn a_list_upload_is_all_or_nothing_and_keeps_each_member_once() {
    let app = TestApp::spawn().await;
    let id = create_list(&app, "vip").await;
    // A bad line refuses the whole upload, naming its number; nothing is stored.
    let lines = "{\"userId\":\"+33600000001\"}\n{\"userId\":\"+33600000002\"}\n{\"userId\":\"x\",\"sandbox\":\"b\"}\n";
    let (status, body) = upload(&app, &app.key, &id, "application/x-ndjson", lines).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["type"], "https://herald.dev/errors/invalid-audience-member");
    assert_eq!(body["line"], 3);
    assert_eq!(app.get(&format!("/audiences/{id}")).await.body["size"], 0);
    let (status, body) = upload(&app, &app.key, &id, "application/x-ndjson", "{\"userId\":\"a\u{0}\"}\n").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = upload(&app, &app.key, &id, "application/json", "[]").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let (status, _) = upload(&app, &app.key, &id, "text/csv", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a CSV without its header");
    let stranger = app.key_for("b", &Scope::ALL).await;
    let (status, _) = upload(&app, &stranger, &id, "application/x-ndjson", "{\"userId\":\"x\"}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Duplicates keep their first position; the last line needs no line break.
    let lines = "{\"userId\":\"+33600000001\"}\r\n\n{\"userId\":\"+33600000002\"}\n{\"userId\":\"+33600000001\"}\n\
                 {\"userId\":\"x@example.com\",\"type\":\"external\"}";
    let (status, body) = upload(&app, &app.key, &id, "application/x-ndjson", lines).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["size"].as_i64(), body["rows"].as_i64(), body["duplicates"].as_i64()),
        (Some(3), Some(4), Some(1))
    );
    let client = sql(&app).await;
    let rows =
        client.query("SELECT seq, kind, namespace, user_id FROM audience_members ORDER BY seq", &[]).await.unwrap();
    let members: Vec<(i32, String, String, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        members,
        [
            (0, "aep".into(), "phone".into(), "+33600000001".into()),
            (1, "aep".into(), "phone".into(), "+33600000002".into()),
            (2, "external".into(), "phone".into(), "x@example.com".into()),
        ]
    );

    // A CSV upload replaces them (the old generation goes, nothing references it).
    let (status, body) =
        upload(&app, &app.key, &id, "text/csv", "userId,namespace\n\"+33600000009\",phone\n+33600000008,\n").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["size"], 2);
    let left: i64 = client.query_one("SELECT count(*) FROM audience_members", &[]).await.unwrap().get(0);
    assert_eq!(left, 2);

    // A filter audience's members come from its filter.
    let filter = app
        .post("/audiences", &json!({"name": "f", "filter": {"field": "namespace", "op": "eq", "value": "crm"}}))
        .await;
    let (status, body) =
        upload(&app, &app.key, filter.body["id"].as_str().unwrap(), "application/x-ndjson", "{\"userId\":\"x\"}").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "https://herald.dev/errors/audience-not-uploadable");
    // The connection of every refused upload was dropped, not reused mid-transaction.
    assert_eq!(app.get(&format!("/audiences/{id}")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_million_line_upload_streams_into_the_list() {
    let app = TestApp::spawn().await;
    let id = create_list(&app, "million").await;
    let mut lines = String::with_capacity(28_000_000);
    for i in 0..1_000_000 {
        lines.push_str(&format!("{{\"userId\":\"+336{i:08}\"}}\n"));
    }
    let started = std::time::Instant::now();
    let (status, body) = upload(&app, &app.key, &id, "application/x-ndjson", lines).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["size"].as_i64(), body["rows"].as_i64()), (Some(1_000_000), Some(1_000_000)));
    eprintln!("1,000,000 members uploaded in {:?}", started.elapsed());
    let client = sql(&app).await;
    let row = client
        .query_one("SELECT count(*), min(seq), max(seq), count(DISTINCT user_id) FROM audience_members", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i32>(1), row.get::<_, i32>(2), row.get::<_, i64>(3)),
        (1_000_000, 0, 999_999, 1_000_000)
    );
}

/// Starts an upload over a raw connection that announces `length` bytes and sends only `sent`
/// of them, and leaves it open.
async fn stalled_upload(app: &TestApp, audience: &str, sent: &str, length: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let address = app.address.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "PUT /audiences/{audience}/members?namespace=phone HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {length}\r\n\r\n{sent}",
        app.key
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket
}

#[tokio::test]
async fn slow_or_abandoned_uploads_keep_no_connection_from_other_requests() {
    let app = TestApp::spawn().await;
    let (first, second, third) =
        (create_list(&app, "one").await, create_list(&app, "two").await, create_list(&app, "three").await);
    let line = "{\"userId\":\"+33600000001\"}\n";
    let one = stalled_upload(&app, &first, line, 10_000).await;
    let two = stalled_upload(&app, &second, line, 10_000).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Two uploads hold their turns: a third waits its turn, with Retry-After.
    let (status, body) = upload(&app, &app.key, &third, "application/x-ndjson", line).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["type"], "https://herald.dev/errors/uploads-busy");
    // Everything else is answered meanwhile, including database reads.
    for _ in 0..20 {
        assert_eq!(app.get("/audiences").await.status, StatusCode::OK);
    }
    // An upload abandoned mid-body stores nothing and gives its turn and its connection back.
    drop(one);
    drop(two);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (status, body) = upload(&app, &app.key, &third, "application/x-ndjson", line).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["size"], 1);
    for audience in [&first, &second] {
        assert_eq!(app.get(&format!("/audiences/{audience}")).await.body["size"], 0);
        // The lock of the abandoned upload is gone with its connection: uploading works.
        let (status, body) = upload(&app, &app.key, audience, "application/x-ndjson", line).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
