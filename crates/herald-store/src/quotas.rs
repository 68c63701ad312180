//! Daily recipient quotas per sandbox and channel, shared by every API process. A process leases
//! part of the day's quota at a time and spends it locally (see herald-ingest's `ratelimit.rs`).

use chrono::NaiveDate;

use crate::{Store, StoreError};

/// The answer to a quota lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLease {
    /// Recipients now owned by the caller (0 when fewer than needed were left).
    pub granted: u64,
    /// What is left of the day's quota afterwards.
    pub remaining: u64,
}

impl Store {
    /// Leases `need` to `want` recipients of `sandbox`'s `quota` on `channel` for `day`, all or
    /// nothing for `need`.
    pub async fn lease_daily_quota(
        &self,
        sandbox: &str,
        channel: &str,
        day: NaiveDate,
        quota: u64,
        need: u64,
        want: u64,
    ) -> Result<QuotaLease, StoreError> {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let (quota, need) = (signed(quota), signed(need));
        let want = signed(want).max(need);
        let client = self.client().await?;
        let lease =
            client.prepare_cached("SELECT granted, remaining FROM herald_lease_quota($1, $2, $3, $4, $5, $6)").await?;
        let row = client.query_one(&lease, &[&sandbox, &channel, &day, &quota, &need, &want]).await?;
        let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(QuotaLease { granted: unsigned(row.get(0)), remaining: unsigned(row.get(1)) })
    }

    /// Forgets the quotas of days before `before`.
    pub async fn purge_daily_quotas(&self, before: NaiveDate) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client.execute("DELETE FROM daily_quotas WHERE day < $1", &[&before]).await?)
    }
}
