//! Dead letters: what the broker's dead-letter queue received, kept where operators can list,
//! filter and replay it. Replay is idempotent: a dead letter is re-injected once per time it
//! was dead-lettered.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub message_id: String,
    pub sandbox: Option<String>,
    pub campaign_id: Option<Uuid>,
    pub execution_id: Option<Uuid>,
    pub recipient_index: Option<i32>,
    pub channel: String,
    pub reason: String,
    pub last_error: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: Uuid,
    pub message_id: String,
    pub sandbox: Option<String>,
    pub campaign_id: Option<Uuid>,
    pub execution_id: Option<Uuid>,
    pub recipient_index: Option<i32>,
    pub channel: String,
    pub reason: String,
    pub last_error: Option<String>,
    pub body: Vec<u8>,
    pub dead_lettered_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replays: i32,
}

const COLUMNS: &str =
    "id, message_id, sandbox, campaign_id, execution_id, recipient_index, channel, reason, last_error, body,
                       dead_lettered_at, replayed_at, replays";

fn from_row(row: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: row.get(0),
        message_id: row.get(1),
        sandbox: row.get(2),
        campaign_id: row.get(3),
        execution_id: row.get(4),
        recipient_index: row.get(5),
        channel: row.get(6),
        reason: row.get(7),
        last_error: row.get(8),
        body: row.get(9),
        dead_lettered_at: row.get(10),
        replayed_at: row.get(11),
        replays: row.get(12),
    }
}

impl Store {
    /// Records a dead letter; one that comes back after a replay is recorded again (replayable).
    pub async fn record_dead_letter(&self, letter: &NewDeadLetter, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO dead_letters (id, message_id, sandbox, campaign_id, execution_id, recipient_index, channel, reason, last_error,
                                           body, dead_lettered_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (message_id) DO UPDATE
                    SET reason = EXCLUDED.reason, last_error = EXCLUDED.last_error, body = EXCLUDED.body,
                        dead_lettered_at = EXCLUDED.dead_lettered_at, replayed_at = NULL
                  WHERE dead_letters.replayed_at IS NOT NULL",
                &[
                    &Uuid::now_v7(),
                    &letter.message_id,
                    &letter.sandbox,
                    &letter.campaign_id,
                    &letter.execution_id,
                    &letter.recipient_index,
                    &letter.channel,
                    &letter.reason,
                    &letter.last_error,
                    &letter.body,
                    &now,
                ],
            )
            .await?;
        Ok(())
    }

    /// Dead letters, newest first; `sandbox: None` lists every sandbox (operator tools).
    pub async fn list_dead_letters(
        &self,
        sandbox: Option<&str>,
        campaign_id: Option<Uuid>,
        reason: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM dead_letters
              WHERE ($1::text IS NULL OR sandbox = $1) AND ($2::uuid IS NULL OR campaign_id = $2) AND ($3::text IS NULL OR reason = $3)
              ORDER BY dead_lettered_at DESC, id LIMIT $4"
        );
        let rows = self.client().await?.query(&sql, &[&sandbox, &campaign_id, &reason, &limit]).await?;
        Ok(rows.iter().map(from_row).collect())
    }

    pub async fn get_dead_letter(&self, sandbox: Option<&str>, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1 AND ($2::text IS NULL OR sandbox = $2)");
        let row = self.client().await?.query_opt(&sql, &[&id, &sandbox]).await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Takes the right to replay `id`: returns the letter when it was not replayed since it was
    /// dead-lettered, and opens its delivery for another try. `None`: already replayed.
    pub async fn begin_replay(
        &self,
        sandbox: Option<&str>,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let sql = format!(
            "UPDATE dead_letters SET replayed_at = $3, replays = replays + 1
              WHERE id = $1 AND ($2::text IS NULL OR sandbox = $2) AND replayed_at IS NULL RETURNING {COLUMNS}"
        );
        let Some(row) = transaction.query_opt(&sql, &[&id, &sandbox, &now]).await? else {
            return Ok(None);
        };
        let letter = from_row(&row);
        if let (Some(execution_id), Some(index)) = (letter.execution_id, letter.recipient_index) {
            // A fresh budget of attempts, claimable at once.
            transaction
                .execute(
                    "UPDATE deliveries SET status = 'retrying', attempts = 0, not_before = NULL, updated_at = $3
                      WHERE execution_id = $1 AND recipient_index = $2 AND status = 'failed'",
                    &[&execution_id, &index, &now],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(Some(letter))
    }

    /// Undoes [`Store::begin_replay`] when the re-injection could not be published.
    pub async fn abort_replay(&self, id: Uuid) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("UPDATE dead_letters SET replayed_at = NULL, replays = replays - 1 WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }
}
