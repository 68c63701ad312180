//! Renders of redelivered messages, counted so that a message that keeps killing the worker
//! rendering it is recognised (see migration 0009), and render failures with their reason.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{DeliveryKey, Store, StoreError};

impl Store {
    /// Notes that a redelivered message starts rendering; returns how many renders of it have
    /// started without finishing, this one included.
    pub async fn start_redelivered_render(&self, key: &DeliveryKey, now: DateTime<Utc>) -> Result<i32, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO render_attempts (execution_id, recipient_index, unfinished, updated_at)
                 VALUES ($1, $2, 1, $3)
                 ON CONFLICT (execution_id, recipient_index) DO UPDATE
                    SET unfinished = render_attempts.unfinished + 1, updated_at = EXCLUDED.updated_at
                 RETURNING unfinished",
                &[&key.execution_id, &key.recipient_index, &now],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The render of a redelivered message returned (whatever its result): it did not kill the
    /// process. Also forgets a message that was dead-lettered for killing it.
    pub async fn finish_redelivered_render(&self, key: &DeliveryKey) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM render_attempts WHERE execution_id = $1 AND recipient_index = $2",
                &[&key.execution_id, &key.recipient_index],
            )
            .await?;
        Ok(())
    }

    /// Records a delivery that failed before it could be sent, with `last_error` saying why (a
    /// template over its budget, for instance). The row is written as [`Store::record_delivery`]
    /// writes it, under the same rule, in one statement so that no reader sees it without its
    /// reason.
    pub async fn record_failure_before_send(
        &self,
        key: &DeliveryKey,
        version_id: Option<Uuid>,
        reason: &str,
        last_error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO deliveries (execution_id, recipient_index, status, reason, attempts, campaign_version_id, campaign_id, channel,
                                         last_error, created_at, updated_at)
                 VALUES ($1, $2, 'failed', $3, 0, $4, $5, $6, $7, $8, $8)
                 ON CONFLICT (execution_id, recipient_index) DO UPDATE
                    SET status = EXCLUDED.status, reason = EXCLUDED.reason, last_error = EXCLUDED.last_error,
                        updated_at = EXCLUDED.updated_at
                  WHERE deliveries.status = 'retrying'
                     OR (deliveries.status = 'sending' AND deliveries.call_started_at IS NULL
                         AND deliveries.claimed_at < EXCLUDED.updated_at - make_interval(secs => $9))",
                &[
                    &key.execution_id,
                    &key.recipient_index,
                    &reason,
                    &version_id,
                    &key.campaign_id,
                    &key.channel,
                    &last_error,
                    &now,
                    &(crate::deliveries::UNSTARTED_CLAIM_STALE.num_milliseconds() as f64 / 1000.0),
                ],
            )
            .await?;
        Ok(())
    }
}
