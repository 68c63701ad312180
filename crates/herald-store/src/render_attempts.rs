//! Renders of redelivered messages, counted so that a message that keeps killing the worker
//! rendering it is recognised (see migration 0009).

use chrono::{DateTime, Utc};

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
}
