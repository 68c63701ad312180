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
    assert_eq!(
        total,
        herald_store::Store::latest_migration() as usize,
        "{applied:?}"
    );
    assert_eq!(
        database.store().migrate().await.unwrap(),
        Vec::<i32>::new(),
        "a second run has nothing to do"
    );
}
