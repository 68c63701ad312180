//! Executions: the idempotency record of each request and its per-recipient deliveries.
//!
//! Claims are written in batches (one statement for many concurrent requests) because
//! PostgreSQL commits only a few thousand single-row transactions a second here, and ingest
//! must accept more requests than that.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use herald_core::delivery::DeliveryStatus;
use herald_core::execution::ExecutionState;
use serde_json::Value;
use uuid::Uuid;

use crate::{Store, StoreError};

/// One request's claim on its idempotency key.
#[derive(Debug, Clone)]
pub struct ExecutionClaim {
    pub sandbox: String,
    pub campaign_id: Uuid,
    pub request_id: String,
    pub body_hash: Vec<u8>,
    /// The id this execution gets if the claim creates it.
    pub execution_id: Uuid,
    /// Recipient summary shown by the status endpoint (addresses masked).
    pub recipients: Value,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// New execution: publish it.
    Claimed { execution_id: Uuid, created_at: DateTime<Utc> },
    /// An earlier attempt stopped half-way and its lease expired: publish it again, same ids.
    TakenOver { execution_id: Uuid, created_at: DateTime<Utc> },
    /// Already accepted: answer the original 202, publish nothing.
    AlreadyAccepted { execution_id: Uuid, created_at: DateTime<Utc> },
    /// Another attempt is accepting it right now; its lease ends after `retry_after`.
    InProgress { retry_after: std::time::Duration },
    /// The key was used with a different body.
    BodyMismatch,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    pub execution_id: Uuid,
    pub campaign_id: Uuid,
    pub request_id: String,
    pub state: ExecutionState,
    pub recipients: Value,
    pub created_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub recipient_index: i32,
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    pub attempts: i32,
    /// The provider's last error (redacted when it was written), for failed and retried sends.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What the provider said after the send (delivered, bounced, ...), its detail and time.
    pub feedback: Option<(String, Option<String>, Option<DateTime<Utc>>)>,
}

type Key = (String, Uuid, String);

/// An existing execution as a conflicting claim sees it.
struct Existing {
    execution_id: Uuid,
    body_hash: Vec<u8>,
    state: ExecutionState,
    created_at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
}

impl Store {
    /// Claims every key in `claims` (one round trip for the new ones); outcomes are in order.
    pub async fn claim_executions(&self, claims: &[ExecutionClaim]) -> Result<Vec<ClaimOutcome>, StoreError> {
        let client = self.client().await?;
        // Inserted in key order: concurrent batches then wait on each other's keys in the same
        // order and cannot deadlock.
        let mut sorted: Vec<&ExecutionClaim> = claims.iter().collect();
        sorted.sort_by(|a, b| {
            (&a.sandbox, a.campaign_id, &a.request_id).cmp(&(&b.sandbox, b.campaign_id, &b.request_id))
        });
        let column = |f: fn(&ExecutionClaim) -> Value| sorted.iter().map(|c| f(c)).collect::<Vec<Value>>();
        let ids: Vec<Uuid> = sorted.iter().map(|c| c.execution_id).collect();
        let sandboxes: Vec<&str> = sorted.iter().map(|c| c.sandbox.as_str()).collect();
        let campaigns: Vec<Uuid> = sorted.iter().map(|c| c.campaign_id).collect();
        let requests: Vec<&str> = sorted.iter().map(|c| c.request_id.as_str()).collect();
        let hashes: Vec<&[u8]> = sorted.iter().map(|c| c.body_hash.as_slice()).collect();
        let recipients = column(|c| c.recipients.clone());
        let created: Vec<DateTime<Utc>> = sorted.iter().map(|c| c.now).collect();
        let leases: Vec<DateTime<Utc>> = sorted.iter().map(|c| c.lease_until).collect();
        // Prepared once per pooled connection: the hot statements skip a parse and plan per batch.
        let insert = client
            .prepare_cached(
                "SELECT id FROM herald_claim_executions($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::bytea[], $6::jsonb[],
                                                $7::timestamptz[], $8::timestamptz[]) AS id",
            )
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] =
            [&ids, &sandboxes, &campaigns, &requests, &hashes, &recipients, &created, &leases];
        let inserted: HashSet<Uuid> =
            crate::error::retry_contention("claiming request ids", || client.query(&insert, &params))
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
        let conflicts: Vec<&ExecutionClaim> = claims.iter().filter(|c| !inserted.contains(&c.execution_id)).collect();
        let mut existing: HashMap<Key, Existing> = HashMap::new();
        if !conflicts.is_empty() {
            let sandboxes: Vec<&str> = conflicts.iter().map(|c| c.sandbox.as_str()).collect();
            let campaigns: Vec<Uuid> = conflicts.iter().map(|c| c.campaign_id).collect();
            let requests: Vec<&str> = conflicts.iter().map(|c| c.request_id.as_str()).collect();
            let rows = client
                .query(
                    "SELECT sandbox, campaign_id, request_id, execution_id, body_hash, state, created_at, lease_until
                       FROM executions
                      WHERE (sandbox, campaign_id, request_id) IN (SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[]))",
                    &[&sandboxes, &campaigns, &requests],
                )
                .await?;
            for row in rows {
                existing.insert(
                    (row.get(0), row.get(1), row.get(2)),
                    Existing {
                        execution_id: row.get(3),
                        body_hash: row.get(4),
                        state: row.try_get(5)?,
                        created_at: row.get(6),
                        lease_until: row.get(7),
                    },
                );
            }
        }
        // A key no unitary execution holds, yet not claimed: an audience execution holds it.
        let mut audience_keys: HashSet<Key> = HashSet::new();
        let unexplained: Vec<&&ExecutionClaim> = conflicts
            .iter()
            .filter(|c| !existing.contains_key(&(c.sandbox.clone(), c.campaign_id, c.request_id.clone())))
            .collect();
        if !unexplained.is_empty() {
            let sandboxes: Vec<&str> = unexplained.iter().map(|c| c.sandbox.as_str()).collect();
            let campaigns: Vec<Uuid> = unexplained.iter().map(|c| c.campaign_id).collect();
            let requests: Vec<&str> = unexplained.iter().map(|c| c.request_id.as_str()).collect();
            let rows = client
                .query(
                    "SELECT sandbox, campaign_id, request_id FROM audience_executions
                      WHERE (sandbox, campaign_id, request_id) IN (SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[]))",
                    &[&sandboxes, &campaigns, &requests],
                )
                .await?;
            audience_keys.extend(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))));
        }
        let mut outcomes = Vec::with_capacity(claims.len());
        for claim in claims {
            if inserted.contains(&claim.execution_id) {
                outcomes.push(ClaimOutcome::Claimed { execution_id: claim.execution_id, created_at: claim.now });
                continue;
            }
            let key = (claim.sandbox.clone(), claim.campaign_id, claim.request_id.clone());
            let Some(Existing { execution_id, body_hash: hash, state, created_at, lease_until }) = existing.get(&key)
            else {
                if audience_keys.contains(&key) {
                    outcomes.push(ClaimOutcome::BodyMismatch);
                    continue;
                }
                // Deleted between the two statements (retention purge): the client retries.
                outcomes.push(ClaimOutcome::InProgress { retry_after: std::time::Duration::from_secs(1) });
                continue;
            };
            let outcome = if *hash != claim.body_hash {
                ClaimOutcome::BodyMismatch
            } else if *state == ExecutionState::Accepted {
                ClaimOutcome::AlreadyAccepted { execution_id: *execution_id, created_at: *created_at }
            } else if *lease_until > claim.now {
                ClaimOutcome::InProgress { retry_after: (*lease_until - claim.now).to_std().unwrap_or_default() }
            } else {
                let taken = client
                    .query_opt(
                        "UPDATE executions SET lease_until = $2
                          WHERE execution_id = $1 AND state = $4 AND lease_until <= $3 RETURNING execution_id",
                        &[execution_id, &claim.lease_until, &claim.now, &ExecutionState::Accepting],
                    )
                    .await?;
                match taken {
                    Some(_) => ClaimOutcome::TakenOver { execution_id: *execution_id, created_at: *created_at },
                    None => ClaimOutcome::InProgress { retry_after: std::time::Duration::from_secs(1) },
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Marks executions whose messages are all confirmed by the broker as accepted.
    pub async fn complete_executions(&self, execution_ids: &[Uuid], now: DateTime<Utc>) -> Result<(), StoreError> {
        let client = self.client().await?;
        let complete = client
            .prepare_cached("SELECT herald_complete_executions($1::uuid[], $2::timestamptz, $3::text, $4::text)")
            .await?;
        client
            .execute(&complete, &[&execution_ids, &now, &ExecutionState::Accepted, &ExecutionState::Accepting])
            .await?;
        Ok(())
    }

    /// Ends the lease of an execution whose publishing failed, so the client's retry can take it
    /// over at once (with the same execution id, so nothing already confirmed is sent twice).
    pub async fn release_execution(&self, execution_id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE executions SET lease_until = $2 WHERE execution_id = $1 AND state = $3",
                &[&execution_id, &now, &ExecutionState::Accepting],
            )
            .await?;
        Ok(())
    }

    /// The execution and the deliveries workers recorded for it, if it is in `sandbox`.
    pub async fn execution_status(
        &self,
        sandbox: &str,
        execution_id: Uuid,
    ) -> Result<Option<(ExecutionRecord, Vec<DeliveryRow>)>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT campaign_id, request_id, state, recipients, created_at, accepted_at
                   FROM executions WHERE execution_id = $1 AND sandbox = $2",
                &[&execution_id, &sandbox],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let record = ExecutionRecord {
            execution_id,
            campaign_id: row.get(0),
            request_id: row.get(1),
            state: row.try_get(2)?,
            recipients: row.get(3),
            created_at: row.get(4),
            accepted_at: row.get(5),
        };
        let deliveries = client
            .query(
                "SELECT recipient_index, status, reason, attempts, created_at, updated_at, last_error, feedback, feedback_detail, feedback_at
                   FROM deliveries WHERE execution_id = $1 ORDER BY recipient_index",
                &[&execution_id],
            )
            .await?
            .iter()
            .map(|row| {
                Ok(DeliveryRow {
                    recipient_index: row.get(0),
                    status: row.try_get(1)?,
                    reason: row.get(2),
                    attempts: row.get(3),
                    last_error: row.get(6),
                    created_at: row.get(4),
                    updated_at: row.get(5),
                    feedback: row.get::<_, Option<String>>(7).map(|status| (status, row.get(8), row.get(9))),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some((record, deliveries)))
    }

    /// Which of the (namespace, user id) pairs have a profile in `sandbox`.
    pub async fn existing_profiles(
        &self,
        sandbox: &str,
        identities: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let namespaces: Vec<&str> = identities.iter().map(|(n, _)| n.as_str()).collect();
        let users: Vec<&str> = identities.iter().map(|(_, u)| u.as_str()).collect();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT namespace, user_id FROM profiles
                  WHERE sandbox = $1 AND (namespace, user_id) IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
                &[&sandbox, &namespaces, &users],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Deletes accepted executions older than `before` (their idempotency window has passed).
    pub async fn purge_executions(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(self
            .client()
            .await?
            .execute(
                "DELETE FROM executions WHERE created_at < $1 AND state = $2",
                &[&before, &ExecutionState::Accepted],
            )
            .await?)
    }
}
