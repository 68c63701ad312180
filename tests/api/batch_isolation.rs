//! A request the database refuses fails alone. Idempotency claims are written in shared batches;
//! when a batch's statement fails, its claims are written again one by one, so the neighbours of
//! a bad request — any tenant's — are still accepted.

use herald_core::Scope;
use herald_tests::fixtures::otp_sms;
use herald_tests::{TestApp, TestOptions, execution};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Makes the test database refuse any claim of request id `poison` (as it would refuse a value it
/// cannot store), hold each `blocker` claim 300 ms (so that the requests sent meanwhile queue into
/// one batch), and count every claim row it sees (a sequence: not rolled back with the statement).
const FAULTS: &str = "
    CREATE SEQUENCE claim_rows_seen;
    CREATE FUNCTION claim_faults() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM nextval('claim_rows_seen');
        IF NEW.request_id = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF;
        IF NEW.request_id LIKE 'blocker%' THEN PERFORM pg_sleep(0.3); END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER claim_faults BEFORE INSERT ON executions FOR EACH ROW EXECUTE FUNCTION claim_faults();
";

#[tokio::test]
async fn a_claim_the_database_refuses_fails_alone_and_fifty_concurrent_neighbours_of_another_sandbox_get_202() {
    let app = TestApp::spawn_with(TestOptions::with_broker()).await;
    let good_campaign = app.live_campaign(&otp_sms("otp")).await;
    let key_b = app.key_for("b", &[Scope::CampaignsWrite, Scope::ExecutionsWrite]).await;
    let created = app.call(Method::POST, "/campaigns", Some(&key_b), Some(&otp_sms("hostile"))).await;
    let bad_campaign = created.body["id"].as_str().unwrap().to_string();
    let activated = app.call(Method::POST, &format!("/campaigns/{bad_campaign}/activate"), Some(&key_b), None).await;
    assert_eq!(activated.status, StatusCode::OK, "{}", activated.body);
    let sms =
        |request_id: &str, campaign: &str| execution(request_id, campaign, &[("+33612345678", json!({"otp": "1"}))]);
    // Warm the key and campaign caches, so that the timing below is the batcher's alone.
    for (key, request_id, campaign) in [(&app.key, "warm-a", &good_campaign), (&key_b, "warm-b", &bad_campaign)] {
        let reply = app.call(Method::POST, "/im/executions/unitary", Some(key), Some(&sms(request_id, campaign))).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    }
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(FAULTS).await.unwrap();

    let app = std::sync::Arc::new(app);
    let send = |key: String, body: serde_json::Value| {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move { app.call(Method::POST, "/im/executions/unitary", Some(&key), Some(&body)).await })
    };
    // Both batch writers busy with a slow claim each, so the next requests all queue up.
    let mut neighbours = vec![send(app.key.clone(), sms("blocker-1", &good_campaign))];
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    neighbours.push(send(app.key.clone(), sms("blocker-2", &good_campaign)));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    neighbours.extend((0..25).map(|n| send(app.key.clone(), sms(&format!("good-{n}"), &good_campaign))));
    let poison = send(key_b, sms("poison", &bad_campaign));
    neighbours.extend((25..50).map(|n| send(app.key.clone(), sms(&format!("good-{n}"), &good_campaign))));

    for neighbour in neighbours {
        let reply = neighbour.await.unwrap();
        assert_eq!(reply.status, StatusCode::ACCEPTED, "a neighbour of the bad request failed: {}", reply.body);
    }
    let poison = poison.await.unwrap();
    poison.assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    let seen: i64 = client.query_one("SELECT last_value FROM claim_rows_seen", &[]).await.unwrap().get(0);
    assert!(seen > 53, "the poison shared a batch whose claims were written again one by one ({seen} rows seen)");

    // What the logs say of such a failure: the SQLSTATE and the database's message.
    let now = chrono::Utc::now();
    let claim = herald_store::ExecutionClaim {
        sandbox: "b".into(),
        campaign_id: bad_campaign.parse().unwrap(),
        request_id: "poison".into(),
        body_hash: vec![0],
        execution_id: uuid::Uuid::now_v7(),
        recipients: json!([]),
        now,
        lease_until: now,
    };
    let error = app.store.claim_executions(&[claim]).await.unwrap_err().to_string();
    assert!(error.contains("P0001") && error.contains("refused by the test"), "{error}");
}
