//! Versioned schema migrations, embedded in the binary. Several processes may start at once and
//! all call [`Store::migrate`]: a transaction-scoped advisory lock makes them take turns, and
//! each sees what the previous one applied.

use crate::{Store, StoreError};

/// (version, name, SQL), in order. Never edit an applied migration; add a new one.
#[rustfmt::skip]
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (2, "executions", include_str!("../migrations/0002_executions.sql")),
    (3, "worker", include_str!("../migrations/0003_worker.sql")),
    (4, "retry_not_before", include_str!("../migrations/0004_retry_not_before.sql")),
    (5, "dead_letters", include_str!("../migrations/0005_dead_letters.sql")),
    (6, "rate_limits", include_str!("../migrations/0006_rate_limits.sql")),
    (7, "reports", include_str!("../migrations/0007_reports.sql")),
    (8, "call_started", include_str!("../migrations/0008_call_started.sql")),
    (9, "render_attempts", include_str!("../migrations/0009_render_attempts.sql")),
    (10, "api_key_lifecycle", include_str!("../migrations/0010_api_key_lifecycle.sql")),
    (11, "ingest_limits", include_str!("../migrations/0011_ingest_limits.sql")),
    (12, "hot_updates", include_str!("../migrations/0012_hot_updates.sql")),
    (13, "trigger_plans", include_str!("../migrations/0013_trigger_plans.sql")),
    (14, "batch_functions", include_str!("../migrations/0014_batch_functions.sql")),
    (15, "feedback", include_str!("../migrations/0015_feedback.sql")),
    (16, "feedback_webhooks", include_str!("../migrations/0016_feedback_webhooks.sql")),
    (17, "delivery_address_hash", include_str!("../migrations/0017_delivery_address_hash.sql")),
    (18, "audiences", include_str!("../migrations/0018_audiences.sql")),
    (19, "request_ids_across_endpoints", include_str!("../migrations/0019_request_ids_across_endpoints.sql")),
];

/// Arbitrary but fixed: the advisory lock key all Herald processes agree on.
const MIGRATION_LOCK_KEY: i64 = 0x4845_5241_4c44; // "HERALD"

impl Store {
    /// Applies every pending migration; returns the versions it applied (empty when up to date).
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
        transaction
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS herald_schema_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        let applied: Vec<i32> = transaction
            .query("SELECT version FROM herald_schema_migrations", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut newly_applied = Vec::new();
        for (version, name, sql) in MIGRATIONS.iter().filter(|(version, _, _)| !applied.contains(version)) {
            transaction.batch_execute(sql).await?;
            transaction
                .execute("INSERT INTO herald_schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
                .await?;
            tracing::info!(version, name, "applied migration");
            newly_applied.push(*version);
        }
        transaction.commit().await?;
        Ok(newly_applied)
    }

    /// The newest migration this binary knows; a database behind it needs `herald migrate`.
    pub fn latest_migration() -> i32 {
        MIGRATIONS.last().map_or(0, |(version, _, _)| *version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        files.sort();
        let embedded: Vec<String> =
            MIGRATIONS.iter().map(|(version, name, _)| format!("{version:04}_{name}.sql")).collect();
        assert_eq!(embedded, files, "add the new migration file to MIGRATIONS");
    }
}
