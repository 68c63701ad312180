//! A send rate that holds across every worker process: PostgreSQL hands out send slots one
//! `1/rate` apart (the generic cell rate algorithm), and each worker waits for its slot. The
//! database clock is the only clock involved, so workers on different machines agree.

use std::time::Duration;

use crate::{Store, StoreError};

impl Store {
    /// Reserves the next send slot of `key` at `rate_per_sec`; returns how long to wait for it.
    pub async fn reserve_send_slot(&self, key: &str, rate_per_sec: f64) -> Result<Duration, StoreError> {
        let spacing = 1.0 / rate_per_sec.max(0.001);
        let client = self.client().await?;
        let reserve = client
            .prepare_cached(
                "INSERT INTO rate_limits (key, next_slot) VALUES ($1, clock_timestamp() + make_interval(secs => $2))
                 ON CONFLICT (key) DO UPDATE
                    SET next_slot = greatest(rate_limits.next_slot, clock_timestamp()) + make_interval(secs => $2)
                 RETURNING EXTRACT(EPOCH FROM (next_slot - make_interval(secs => $2) - clock_timestamp()))::float8",
            )
            .await?;
        let row = client.query_one(&reserve, &[&key, &spacing]).await?;
        let wait: f64 = row.get(0);
        Ok(Duration::from_secs_f64(wait.max(0.0)))
    }
}
