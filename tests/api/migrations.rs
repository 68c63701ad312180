use herald_tests::TestDatabase;

#[tokio::test]
async fn migrations_applied_by_several_processes_at_once_are_applied_exactly_once() {
    let database = TestDatabase::create().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let store = database.store();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        applied.push(run.await.unwrap().expect("migration succeeds"));
    }
    let total: usize = applied.iter().map(Vec::len).sum();
    assert_eq!(total, herald_store::Store::latest_migration() as usize, "{applied:?}");
    assert_eq!(database.store().migrate().await.unwrap(), Vec::<i32>::new(), "a second run has nothing to do");
}

#[tokio::test]
async fn purging_forgets_only_accepted_executions_past_the_window() {
    use chrono::{Duration, Utc};
    use herald_store::{ClaimOutcome, ExecutionClaim};
    let database = TestDatabase::create().await;
    let store = database.store();
    store.migrate().await.unwrap();
    let now = Utc::now();
    let claim = |request: &str, at: chrono::DateTime<Utc>| ExecutionClaim {
        sandbox: "a".into(),
        campaign_id: uuid::Uuid::nil(),
        request_id: request.into(),
        body_hash: vec![1],
        execution_id: uuid::Uuid::now_v7(),
        recipients: serde_json::json!([]),
        now: at,
        lease_until: at + Duration::seconds(30),
    };
    let claims = [
        claim("old-accepted", now - Duration::hours(49)),
        claim("old-accepting", now - Duration::hours(49)),
        claim("new", now),
    ];
    let outcomes = store.claim_executions(&claims).await.unwrap();
    assert!(outcomes.iter().all(|o| matches!(o, ClaimOutcome::Claimed { .. })));
    store.complete_executions(&[claims[0].execution_id, claims[2].execution_id], now).await.unwrap();
    assert_eq!(store.purge_executions(now - Duration::hours(48)).await.unwrap(), 1);
    assert!(store.execution_status("a", claims[0].execution_id).await.unwrap().is_none());
    assert!(
        store.execution_status("a", claims[1].execution_id).await.unwrap().is_some(),
        "an unfinished execution is kept"
    );
    assert!(store.execution_status("a", claims[2].execution_id).await.unwrap().is_some());
}

/// Herald's connections plan every statement with its parameters: a generic plan kept from when
/// `deliveries` was empty would scan the whole table for each batch (see `Store::connect`).
/// Options the operator put in the URL are kept.
#[tokio::test]
async fn store_connections_plan_each_statement_and_keep_the_urls_own_options() {
    let database = TestDatabase::create().await;
    let url = format!("{}?options=-c%20statement_timeout%3D4321", database.url);
    let store = herald_store::Store::connect(&url, 2).unwrap();
    let (client, connection) =
        store.connection_config().connect(tokio_postgres::NoTls).await.expect("connect with the store's settings");
    tokio::spawn(connection);
    let show = |name: &'static str| {
        let client = &client;
        async move { client.query_one(&format!("SHOW {name}"), &[]).await.unwrap().get::<_, String>(0) }
    };
    assert_eq!(show("plan_cache_mode").await, "force_custom_plan");
    assert_eq!(show("statement_timeout").await, "4321ms");
}
