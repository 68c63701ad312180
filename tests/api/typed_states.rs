//! Domain states are enums in the code and text in PostgreSQL: the two agree exactly, and a value
//! the code does not know is an error when read back, never a default (a corrupt row must not
//! pass for a final status).

use std::collections::BTreeSet;

use chrono::Utc;
use herald_core::Channel;
use herald_core::delivery::DeliveryStatus;
use herald_core::execution::ExecutionState;
use herald_store::{ClaimRequest, DeliveryKey, ExecutionClaim, StoreError};
use herald_tests::TestApp;
use herald_tests::fixtures::otp_sms;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

async fn sql(app: &TestApp) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&app.database.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The quoted values of a CHECK constraint (`status IN ('sending', ...)`).
async fn allowed_values(client: &tokio_postgres::Client, constraint: &str) -> BTreeSet<String> {
    let definition: String = client
        .query_one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", &[&constraint])
        .await
        .unwrap_or_else(|error| panic!("constraint {constraint}: {error}"))
        .get(0);
    definition.split('\'').skip(1).step_by(2).map(str::to_string).collect()
}

#[tokio::test]
async fn the_database_allows_exactly_the_states_the_code_knows() {
    let app = TestApp::spawn().await;
    let client = sql(&app).await;
    let statuses: BTreeSet<String> = DeliveryStatus::ALL.iter().map(|s| s.as_str().to_string()).collect();
    assert_eq!(allowed_values(&client, "deliveries_status_check").await, statuses);
    let states: BTreeSet<String> = ExecutionState::ALL.iter().map(|s| s.as_str().to_string()).collect();
    assert_eq!(allowed_values(&client, "executions_state_check").await, states);
}

#[tokio::test]
async fn a_corrupt_delivery_status_is_an_error_not_a_final_state() {
    let app = TestApp::spawn().await;
    let campaign: Uuid = app.live_campaign(&otp_sms("otp")).await.parse().unwrap();
    let (now, execution_id) = (Utc::now(), Uuid::now_v7());
    let claim = ExecutionClaim {
        sandbox: "a".into(),
        campaign_id: campaign,
        request_id: "corrupt".into(),
        body_hash: vec![0; 32],
        execution_id,
        recipients: json!([{"userId": "u0"}]),
        now,
        lease_until: now + chrono::Duration::seconds(30),
    };
    app.store.claim_executions(&[claim]).await.unwrap();
    app.store.complete_executions(&[execution_id], now).await.unwrap();
    let key = DeliveryKey { execution_id, recipient_index: 0, campaign_id: campaign, channel: Channel::Sms };
    let request = || ClaimRequest {
        key: key.clone(),
        version_id: None,
        token: Uuid::now_v7(),
        now: Utc::now(),
        accepted_at: now,
        resend_abandoned: false,
        suppression: None,
    };
    app.store.claim_deliveries(&[request()], chrono::Duration::seconds(60)).await.unwrap();
    // What a bad migration or a hand edit could leave behind.
    let client = sql(&app).await;
    client
        .batch_execute(&format!(
            "ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
             UPDATE deliveries SET status = 'snet' WHERE execution_id = '{execution_id}'"
        ))
        .await
        .unwrap();

    // A second claim looks at the row: before, `snet` read as `unknown`, a final state, and the
    // message was acknowledged unsent.
    let claimed = app.store.claim_deliveries(&[request()], chrono::Duration::seconds(60)).await;
    match claimed {
        Err(error @ StoreError::Database(_)) => {
            assert!(error.to_string().contains("unknown delivery status `snet`"), "{error}");
        }
        other => panic!("a corrupt status was read as {other:?}"),
    }
    // The status endpoint answers a problem (a bug, so 500), without panicking.
    let reply = app.get(&format!("/im/executions/{execution_id}")).await;
    reply.assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "internal");
}
