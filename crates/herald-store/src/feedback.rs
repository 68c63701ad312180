//! Feedback after the send (SES events) and the suppression list it feeds. An event is recorded
//! once: its key goes into `feedback_events` in the same transaction as its effects (the
//! delivery's feedback, the report count, the suppressions), so a second copy changes nothing,
//! and a failed transaction leaves the event to be taken in again.

use chrono::{DateTime, DurationRound, Utc};
use herald_core::Channel;
use herald_core::feedback::{FeedbackEvent, FeedbackStatus, SuppressionReason, feedback_rank, suppression_address};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{Store, StoreError};

/// What recording one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackOutcome {
    /// Taken in: `changed` when the delivery's feedback moved (a weaker, later event does not
    /// move it), `suppressed` addresses added to or strengthened on the suppression list.
    Recorded { changed: bool, suppressed: u32 },
    /// The same event was taken in before.
    Duplicate,
    /// No delivery has this message id (another system's mail on the same topic, or a delivery
    /// purged since): counted, nothing else.
    Unmatched,
}

impl FeedbackOutcome {
    /// Its name in metrics (`herald_feedback_events{outcome}`) and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackOutcome::Recorded { .. } => "recorded",
            FeedbackOutcome::Duplicate => "duplicate",
            FeedbackOutcome::Unmatched => "unmatched",
        }
    }
}

/// One entry of a sandbox's suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub channel: Channel,
    pub address: String,
    pub reason: SuppressionReason,
    pub source: String,
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn suppression(row: &tokio_postgres::Row) -> Result<Suppression, StoreError> {
    let reason: String = row.get(2);
    Ok(Suppression {
        channel: row.try_get(0)?,
        address: row.get(1),
        reason: SuppressionReason::parse(&reason)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown suppression reason {reason:?}")))?,
        source: row.get(3),
        detail: row.get(4),
        created_at: row.get(5),
        updated_at: row.get(6),
    })
}

/// Adds or strengthens an entry: a complaint never weakens a hard bounce, an opt-out or an
/// operator's entry (`herald_suppression_rank`).
const SUPPRESS: &str = "INSERT INTO suppressions AS s (sandbox, channel, address, reason, source, detail, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
     ON CONFLICT (sandbox, channel, address) DO UPDATE
        SET reason = EXCLUDED.reason, source = EXCLUDED.source, detail = EXCLUDED.detail, updated_at = EXCLUDED.updated_at
      WHERE herald_suppression_rank(s.reason) < herald_suppression_rank(EXCLUDED.reason)";

/// The event's recipients that are the delivery's own address (its SHA-256 as the claim wrote
/// it), normalised for the suppression list. A delivery claimed before the hash was kept takes a
/// lone recipient as its own.
fn own_addresses(recipients: &[String], address_hash: Option<&[u8]>) -> Vec<String> {
    let normalised: Vec<String> = recipients.iter().filter_map(|r| suppression_address(Channel::Email, r)).collect();
    match address_hash {
        Some(hash) => {
            normalised.into_iter().filter(|a| Sha256::digest(a.as_bytes()).as_slice() == hash).take(1).collect()
        }
        None if normalised.len() == 1 => normalised,
        None => Vec::new(),
    }
}

impl Store {
    /// Records SES events in one transaction; one outcome per event, in order.
    pub async fn record_feedback(
        &self,
        events: &[FeedbackEvent],
        now: DateTime<Utc>,
    ) -> Result<Vec<FeedbackOutcome>, StoreError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let minute = now.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(now);
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            let fresh = transaction
                .execute(
                    "INSERT INTO feedback_events (event_key, event_type, matched, received_at) VALUES ($1, $2, false, $3)
                     ON CONFLICT DO NOTHING",
                    &[&event.key, &event.event_type, &now],
                )
                .await?;
            if fresh == 0 {
                outcomes.push(FeedbackOutcome::Duplicate);
                continue;
            }
            // By the SES message id; else by Herald's tags, for an event that overtook the write
            // of its sent outcome (the row is still `sending`, its message id not yet set).
            let row = transaction
                .query_opt(
                    "SELECT d.execution_id, d.recipient_index, d.campaign_id, d.channel, c.sandbox, d.feedback, d.address_hash,
                            d.feedback_detail
                       FROM deliveries d JOIN campaigns c ON c.id = d.campaign_id
                      WHERE d.provider_message_id = $1
                         OR (d.execution_id = $2 AND d.recipient_index = $3 AND d.provider_message_id IS NULL
                             AND d.status IN ('sending', 'unknown'))
                      ORDER BY d.provider_message_id IS NULL LIMIT 1 FOR UPDATE OF d",
                    &[&event.message_id, &event.execution_id, &event.recipient_index],
                )
                .await?;
            let Some(row) = row else {
                outcomes.push(FeedbackOutcome::Unmatched);
                continue;
            };
            let (execution_id, index, campaign_id): (Uuid, i32, Uuid) = (row.get(0), row.get(1), row.get(2));
            let (channel, sandbox): (String, String) = (row.get(3), row.get(4));
            let current: Option<String> = row.get(5);
            // Herald sends each email to one recipient: an event naming only other addresses is
            // not about this delivery (it changes nothing and suppresses no one).
            let own = own_addresses(&event.recipients, row.get::<_, Option<Vec<u8>>>(6).as_deref());
            if !event.recipients.is_empty() && own.is_empty() {
                outcomes.push(FeedbackOutcome::Unmatched);
                continue;
            }
            transaction
                .execute("UPDATE feedback_events SET matched = true WHERE event_key = $1", &[&event.key])
                .await?;
            let current_hard = row.get::<_, Option<String>>(7).is_some_and(|detail| detail.starts_with("Permanent/"));
            let rank = current
                .as_deref()
                .and_then(FeedbackStatus::parse)
                .map_or(0, |status| feedback_rank(status, current_hard));
            let changed = match event.status {
                Some(status) if event.rank() > rank => {
                    transaction
                        .execute(
                            "UPDATE deliveries SET feedback = $3, feedback_detail = $4, feedback_at = $5
                              WHERE execution_id = $1 AND recipient_index = $2",
                            &[
                                &execution_id,
                                &index,
                                &status.as_str(),
                                &event.detail,
                                &event.occurred_at.unwrap_or(now),
                            ],
                        )
                        .await?;
                    true
                }
                _ => false,
            };
            // Counted when it moves the delivery on, so each outcome counts once per message (a
            // second soft bounce or a Delivery after a Complaint counts nothing): the rates stay
            // fractions of the messages sent.
            if changed && let Some(name) = event.report_event() {
                transaction
                    .execute(
                        "INSERT INTO report_pending (campaign_id, channel, minute, event, reason, count) VALUES ($1, $2, $3, $4, $5, 1)",
                        &[&campaign_id, &channel, &minute, &name, &event.report_reason()],
                    )
                    .await?;
            }
            let mut suppressed = 0;
            if let Some(reason) = event.suppresses() {
                let source = format!("ses:{}:{}", event.event_type, event.message_id);
                for address in &own {
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                        [&sandbox, &"email", address, &reason.as_str(), &source, &event.detail, &now];
                    suppressed += u32::try_from(transaction.execute(SUPPRESS, &params).await?).unwrap_or(0);
                }
            }
            outcomes.push(FeedbackOutcome::Recorded { changed, suppressed });
        }
        transaction.commit().await?;
        Ok(outcomes)
    }

    /// Adds `address` (normalised by the caller) to `sandbox`'s list, or strengthens its entry;
    /// `true` when the list changed.
    pub async fn suppress(
        &self,
        sandbox: &str,
        channel: Channel,
        address: &str,
        (reason, source, detail): (SuppressionReason, &str, Option<&str>),
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
            [&sandbox, &channel, &address, &reason.as_str(), &source, &detail, &now];
        Ok(self.client().await?.execute(SUPPRESS, &params).await? > 0)
    }

    /// Sets an entry as an operator asks (any reason, including weaker than the current one).
    pub async fn put_suppression(
        &self,
        sandbox: &str,
        channel: Channel,
        address: &str,
        reason: SuppressionReason,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Suppression, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO suppressions AS s (sandbox, channel, address, reason, source, detail, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 'api', $5, $6, $6)
                 ON CONFLICT (sandbox, channel, address) DO UPDATE
                    SET reason = EXCLUDED.reason, source = 'api', detail = EXCLUDED.detail, updated_at = EXCLUDED.updated_at
                 RETURNING channel, address, reason, source, detail, created_at, updated_at",
                &[&sandbox, &channel, &address, &reason.as_str(), &detail, &now],
            )
            .await?;
        suppression(&row)
    }

    pub async fn get_suppression(
        &self,
        sandbox: &str,
        channel: Channel,
        address: &str,
    ) -> Result<Option<Suppression>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT channel, address, reason, source, detail, created_at, updated_at FROM suppressions
                  WHERE sandbox = $1 AND channel = $2 AND address = $3",
                &[&sandbox, &channel, &address],
            )
            .await?;
        row.as_ref().map(suppression).transpose()
    }

    /// `true` when there was an entry.
    pub async fn delete_suppression(&self, sandbox: &str, channel: Channel, address: &str) -> Result<bool, StoreError> {
        let deleted = self
            .client()
            .await?
            .execute(
                "DELETE FROM suppressions WHERE sandbox = $1 AND channel = $2 AND address = $3",
                &[&sandbox, &channel, &address],
            )
            .await?;
        Ok(deleted > 0)
    }

    /// A page of `sandbox`'s list in (channel, address) order, after `after` (the cursor).
    pub async fn list_suppressions(
        &self,
        sandbox: &str,
        channel: Option<Channel>,
        after: Option<(Channel, String)>,
        limit: i64,
    ) -> Result<Vec<Suppression>, StoreError> {
        let (after_channel, after_address) = match &after {
            Some((channel, address)) => (Some(channel.as_str()), Some(address.as_str())),
            None => (None, None),
        };
        let rows = self
            .client()
            .await?
            .query(
                "SELECT channel, address, reason, source, detail, created_at, updated_at FROM suppressions
                  WHERE sandbox = $1 AND ($2::text IS NULL OR channel = $2)
                    AND ($3::text IS NULL OR (channel, address) > ($3, $4))
                  ORDER BY channel, address LIMIT $5",
                &[&sandbox, &channel.map(Channel::as_str), &after_channel, &after_address, &limit],
            )
            .await?;
        rows.iter().map(suppression).collect()
    }

    /// Forgets event keys older than `before`: a copy arriving later than that is taken as new.
    pub async fn purge_feedback_events(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(self.client().await?.execute("DELETE FROM feedback_events WHERE received_at < $1", &[&before]).await?)
    }
}
