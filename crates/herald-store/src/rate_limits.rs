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

/// The answer to a token lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLease {
    /// Tokens now owned by the caller (0 when fewer than needed were available).
    pub granted: u32,
    /// Tokens left in the bucket afterwards (a fraction; what the caller can expect without
    /// asking again, since others only take more).
    pub available: f64,
}

impl Store {
    /// Leases `need` to `want` tokens of the token bucket `key` (`rate_per_sec` tokens a second,
    /// at most `burst` banked), all or nothing for `need`. The same table and clock as the send
    /// slots: the bucket's theoretical arrival time is its `next_slot`.
    pub async fn lease_tokens(
        &self,
        key: &str,
        rate_per_sec: f64,
        burst: f64,
        need: u32,
        want: u32,
    ) -> Result<TokenLease, StoreError> {
        let spacing = 1.0 / rate_per_sec.max(0.001);
        let need = i32::try_from(need).unwrap_or(i32::MAX);
        let want = i32::try_from(want).unwrap_or(i32::MAX).max(need);
        let client = self.client().await?;
        let lease =
            client.prepare_cached("SELECT granted, available FROM herald_lease_tokens($1, $2, $3, $4, $5)").await?;
        let row = client.query_one(&lease, &[&key, &spacing, &burst, &need, &want]).await?;
        let granted: i32 = row.get(0);
        Ok(TokenLease { granted: u32::try_from(granted).unwrap_or(0), available: row.get(1) })
    }

    /// Forgets buckets and send slots idle since `before`: a slot in the past means the same as
    /// no row (a full bucket, no wait).
    pub async fn purge_rate_limits(&self, before: chrono::DateTime<chrono::Utc>) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM rate_limits WHERE next_slot < $1", &[&before]).await?)
    }
}
